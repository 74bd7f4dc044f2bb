//! API keys: `Authorization: Bearer <key>`. Client keys may call `/v1/*`
//! except `/v1/admin/*`; admin keys may call everything. Keys are compared in
//! constant time, and every configured key is compared, so timing tells
//! nothing. With no keys configured the gateway is open (and says so at start).

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::config::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Admin,
}

/// The role a presented key has, if any.
pub fn role_of(presented: &str, clients: &[Secret], admins: &[Secret]) -> Option<Role> {
    let matches = |keys: &[Secret]| {
        keys.iter().fold(subtle::Choice::from(0u8), |found, key| {
            found | presented.as_bytes().ct_eq(key.0.as_bytes())
        })
    };
    let admin = bool::from(matches(admins));
    let client = bool::from(matches(clients));
    if admin {
        Some(Role::Admin)
    } else if client {
        Some(Role::Client)
    } else {
        None
    }
}

pub async fn require_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let gateway = &state.settings.gateway;
    let path = request.uri().path();
    let dashboard = path == "/dashboard";
    if !(path.starts_with("/v1/") || dashboard)
        || (gateway.client_keys.is_empty() && gateway.admin_keys.is_empty())
    {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|k| k.trim().to_owned())
        // A browser opening the dashboard cannot send a header: `?key=`.
        .or_else(|| {
            dashboard
                .then(|| query_key(request.uri().query().unwrap_or_default()))
                .flatten()
        });
    let role = presented
        .as_deref()
        .and_then(|key| role_of(key, &gateway.client_keys, &gateway.admin_keys));
    match role {
        None => ApiError::Unauthorized.into_response(),
        Some(Role::Client) if path.starts_with("/v1/admin/") || dashboard => {
            ApiError::Forbidden(path.to_owned()).into_response()
        }
        Some(_) => next.run(request).await,
    }
}

/// The `key` parameter of a query string, percent-decoded.
fn query_key(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "key")
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_roles() {
        let clients = vec![Secret("client-key-0000000001".into())];
        let admins = vec![Secret("admin-key-00000000001".into())];
        assert_eq!(
            role_of("client-key-0000000001", &clients, &admins),
            Some(Role::Client)
        );
        assert_eq!(
            role_of("admin-key-00000000001", &clients, &admins),
            Some(Role::Admin)
        );
        assert_eq!(role_of("client-key-000000000", &clients, &admins), None);
        assert_eq!(role_of("", &clients, &admins), None);
    }
}
