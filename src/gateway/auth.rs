//! API keys: `Authorization: Bearer <key>`. Client keys may call `/v1/*`
//! except `/v1/admin/*`; admin keys may call everything. Keys are compared in
//! constant time, and every configured key is compared, so timing tells
//! nothing. With no keys configured the gateway is open (and says so at start).

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::header::AUTHORIZATION;
use axum::response::{IntoResponse, Response};
use futures::future::{ready, Either, Ready};
use subtle::ConstantTimeEq;
use tower::{Layer, Service};

use super::error::ApiError;
use crate::config::{GatewaySettings, Secret, Settings};

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

/// The key check in front of every route. A request that may pass goes on
/// to its route's own future; one that may not is answered at once. A layer
/// of its own rather than a middleware function, which costs a boxed future
/// and a clone of the router per request.
#[derive(Clone)]
pub struct RequireKeyLayer {
    settings: Arc<Settings>,
}

impl RequireKeyLayer {
    pub fn new(settings: Arc<Settings>) -> Self {
        Self { settings }
    }
}

impl<S> Layer<S> for RequireKeyLayer {
    type Service = RequireKey<S>;

    fn layer(&self, inner: S) -> RequireKey<S> {
        RequireKey {
            inner,
            settings: Arc::clone(&self.settings),
        }
    }
}

#[derive(Clone)]
pub struct RequireKey<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S> Service<Request> for RequireKey<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match refusal(&self.settings.gateway, &request) {
            None => Either::Right(self.inner.call(request)),
            Some(refused) => Either::Left(ready(Ok(refused))),
        }
    }
}

/// The answer to a request its key does not allow (401, 403), or `None`
/// when it may go on.
fn refusal(gateway: &GatewaySettings, request: &Request) -> Option<Response> {
    let path = request.uri().path();
    let dashboard = path == "/dashboard";
    if !(path.starts_with("/v1/") || dashboard)
        || (gateway.client_keys.is_empty() && gateway.admin_keys.is_empty())
    {
        return None;
    }
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .map(str::to_owned)
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
        None => Some(ApiError::Unauthorized.into_response()),
        Some(Role::Client) if path.starts_with("/v1/admin/") || dashboard => {
            Some(ApiError::Forbidden(path.to_owned()).into_response())
        }
        Some(_) => None,
    }
}

/// The key of an `Authorization` value of the Bearer scheme. The scheme's
/// name is case-insensitive (RFC 9110 §11.1): `bearer <key>` is the same.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, key) = value.trim().split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
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

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        assert_eq!(bearer_token("Bearer k-1"), Some("k-1"));
        assert_eq!(bearer_token("bearer k-1"), Some("k-1"));
        assert_eq!(bearer_token("BEARER   k-1 "), Some("k-1"));
        assert_eq!(bearer_token("Basic k-1"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer  "), None);
        assert_eq!(bearer_token("Bearerk-1"), None);
    }
}
