//! One self-contained HTML page for one run or several side by side: the
//! reports' JSON, the charting library (uPlot, MIT, `assets/uplot/`) and the
//! page's own script, all inline, so the file opens anywhere without a
//! network.

use super::report::Report;
use crate::pages::{escape, script_safe, PAGE_CSS, UPLOT_CSS, UPLOT_JS, UPLOT_LICENSE};

const REPORT_JS: &str = include_str!("../../assets/report.js");

/// The page for `runs` (label, report), in the order given.
pub fn page(title: &str, runs: &[(String, Report)]) -> String {
    let data: Vec<serde_json::Value> = runs
        .iter()
        .map(|(label, report)| serde_json::json!({"label": label, "report": report}))
        .collect();
    let data = serde_json::to_string(&data).unwrap_or_else(|_| "[]".into());
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{UPLOT_CSS}</style>
<style>{PAGE_CSS}</style>
</head>
<body data-state="loading">
<header><h1>{title}</h1><div id="verdicts"></div></header>
<main id="main"></main>
<footer>Drawn with uPlot (MIT licence, below). Made by <code>stampede loadgen</code> / <code>stampede report</code>.
<details><summary>uPlot licence</summary><pre>{licence}</pre></details></footer>
<script id="runs" type="application/json">{data}</script>
<script>{uplot}</script>
<script>{script}</script>
</body>
</html>
"#,
        title = escape(title),
        licence = escape(UPLOT_LICENSE),
        data = script_safe(&data),
        uplot = script_safe(UPLOT_JS),
        script = script_safe(REPORT_JS),
    )
}
