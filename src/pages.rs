//! What the HTML pages stampede serves or writes share: the charting library
//! (uPlot, MIT, `assets/uplot/`), the page style, and making text safe to
//! embed. Everything is compiled into the binary, so a page needs no network.

pub const UPLOT_JS: &str = include_str!("../assets/uplot/uPlot.iife.min.js");
pub const UPLOT_CSS: &str = include_str!("../assets/uplot/uPlot.min.css");
pub const UPLOT_LICENSE: &str = include_str!("../assets/uplot/LICENSE");
pub const PAGE_CSS: &str = include_str!("../assets/report.css");

/// Text safe inside a `<script>` element: no `</` can end it early.
pub fn script_safe(text: &str) -> String {
    text.replace("</", "<\\/")
}

/// Text safe inside HTML elements and attribute values.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
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
