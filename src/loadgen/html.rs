//! One self-contained HTML page for one run or several side by side: the
//! reports' JSON, the charting library (uPlot, MIT, `assets/uplot/`) and the
//! page's own script, all inline, so the file opens anywhere without a
//! network.

use super::report::Report;

const UPLOT_JS: &str = include_str!("../../assets/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("../../assets/uplot/uPlot.min.css");
const UPLOT_LICENSE: &str = include_str!("../../assets/uplot/LICENSE");
const REPORT_JS: &str = include_str!("../../assets/report.js");
const PAGE_CSS: &str = include_str!("../../assets/report.css");

/// Text safe inside a `<script>` element: no `</` can end it early.
fn script_safe(text: &str) -> String {
    text.replace("</", "<\\/")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_text_cannot_close_its_script_element() {
        assert_eq!(
            script_safe(r#"{"a":"</script><b>"}"#),
            r#"{"a":"<\/script><b>"}"#
        );
        assert_eq!(escape("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
    }
}
