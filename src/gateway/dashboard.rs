//! `GET /dashboard`: a live page of this process — throughput and outcomes
//! per flow, publish → result p99, consumer lag, coupon stock left, DLQ
//! count — redrawn every second from `/metrics` by its own script. Every
//! asset is inside the binary (no network needed). When API keys are
//! configured it takes an admin key (`Authorization: Bearer`, or `?key=`
//! for a browser, which the page then sends on).

use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::pages::{script_safe, PAGE_CSS, UPLOT_CSS, UPLOT_JS};

const DASHBOARD_JS: &str = include_str!("../../assets/dashboard.js");

pub async fn page() -> Response {
    let html = format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>stampede live</title>
<style>{UPLOT_CSS}</style>
<style>{PAGE_CSS}
#charts {{ display: flex; flex-wrap: wrap; gap: 20px; }}
.figures span {{ margin-right: 24px; }}</style>
</head>
<body data-state="waiting" data-scrapes="0">
<header><h1>stampede live</h1>
<p id="status">waiting for the first reading of /metrics</p>
<p class="figures"><span>decided: <b id="processed">0</b></span><span>dead-lettered: <b id="dlq">0</b></span><span>stock left: <b id="stock">—</b></span></p>
</header>
<main id="charts"></main>
<h2>Outcomes</h2>
<table><thead><tr><th>flow</th><th>outcome</th><th>requests</th></tr></thead><tbody id="outcomes"></tbody></table>
<footer>Charts by uPlot (MIT licence). Figures are this process's own: run the gateway and workers together (<code>stampede run</code>) to see every flow here.</footer>
<script>{uplot}</script>
<script>{script}</script>
</body>
</html>
"#,
        uplot = script_safe(UPLOT_JS),
        script = script_safe(DASHBOARD_JS),
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}
