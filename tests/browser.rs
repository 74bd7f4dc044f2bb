//! The live dashboard and the loadgen report in a real browser: Debian's
//! Chromium driven through chromedriver (WebDriver), both installed by
//! scripts/test.sh. Each page marks itself when its charts are drawn with
//! data; the test waits for that mark (with a deadline), then checks every
//! chart and keeps a screenshot under bench/results/browser/.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::TestEnv;
use serde_json::{json, Value};
use stampede::app::Roles;
use stampede::loadgen::{self, LoadgenOptions, Scenario, Via};

const PATIENCE: Duration = Duration::from_secs(60);

/// One headless Chromium session; the driver stops with it.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(
            std::env::var("STAMPEDE_TEST_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into()),
        )
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian package chromium-driver; scripts/test.sh installs it)");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ready = http.get(format!("{base}/status")).send().await;
            if let Ok(r) = ready {
                let v: Value = r.json().await.unwrap_or_default();
                if v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let binary =
            std::env::var("STAMPEDE_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
                "binary": binary,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1800"]
            }}}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("a browser session: {created}"))
            .to_owned();
        Browser {
            driver,
            base,
            session,
            http,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        answer["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn eval(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Waits until `script` returns true in the page.
    async fn eventually(&self, what: &str, script: &str) {
        let deadline = Instant::now() + PATIENCE;
        while self.eval(script).await != true {
            assert!(
                Instant::now() < deadline,
                "{what}: page says {}",
                self.eval("return document.body.outerHTML.slice(0, 2000)")
                    .await
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Points drawn per chart, by title.
    async fn chart_points(&self) -> Vec<(String, u64)> {
        let v = self
            .eval("return Array.from(document.querySelectorAll('section.chart')).map(c => [c.querySelector('h2').textContent, Number(c.dataset.points || 0)])")
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_str().unwrap().to_owned(), p[1].as_u64().unwrap()))
            .collect()
    }

    async fn screenshot(&self, name: &str) {
        let png = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "a PNG screenshot");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results/browser");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    async fn close(mut self) {
        self.call(reqwest::Method::DELETE, "", None).await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn drop_options(http: String, requests: usize, rate: Option<u64>) -> LoadgenOptions {
    LoadgenOptions {
        scenario: Scenario::CouponDrop,
        requests,
        users: requests / 2,
        stock: 300,
        coupon_shards: 1,
        products: 5,
        rate,
        via: Via::Kafka,
        concurrency: None,
        http_url: http,
        timeout: Duration::from_secs(120),
        verify: true,
        progress: false,
        thresholds: Default::default(),
        cpu: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_a_live_drop_and_the_report_draws_every_chart() {
    let env = TestEnv::new().await;
    let app = env.start(Roles::everything()).await;
    let http = app.http();
    let browser = Browser::start().await;

    // The dashboard, open while a drop runs (2,000 requests offered at 400/s).
    browser.open(&format!("{http}/dashboard")).await;
    let settings = env.settings.clone();
    let mut options = drop_options(http.clone(), 2_000, Some(400));
    // This process's CPU over the drop (the workers run in it), drawn in
    // the report below.
    options.cpu = vec![format!("stampede={}", std::process::id()).parse().unwrap()];
    let drop = tokio::spawn(async move { loadgen::run(&settings, &options).await });
    browser
        .eventually(
            "the dashboard shows requests being decided",
            "return document.body.dataset.state === 'live' && Number(document.getElementById('processed').textContent.replace(/\\D/g, '')) > 0",
        )
        .await;
    browser
        .eventually(
            "the throughput chart shows decisions per second",
            "return Array.from(document.querySelectorAll('section.chart'))[0].dataset.points > 0",
        )
        .await;
    let report = drop.await.unwrap().unwrap();
    assert!(report.passed(), "{}", report.summary());
    browser
        .eventually(
            "the stock left is shown",
            "return document.getElementById('stock').textContent.includes('coupon')",
        )
        .await;
    for (title, points) in browser.chart_points().await {
        assert!(points > 0, "dashboard chart {title:?} has data");
    }
    browser.screenshot("dashboard.png").await;

    // The report of that drop, side by side with a second run.
    let second = loadgen::run(&env.settings, &drop_options(http.clone(), 600, None))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("report.html");
    std::fs::write(
        &page,
        loadgen::html::page(
            "drop at 400/s vs full speed",
            &[("400/s".into(), report), ("full speed".into(), second)],
        ),
    )
    .unwrap();
    browser.open(&format!("file://{}", page.display())).await;
    browser
        .eventually(
            "the report draws its charts",
            "return document.body.dataset.state === 'ready'",
        )
        .await;
    let charts = browser.chart_points().await;
    assert_eq!(charts.len(), 5, "{charts:?}");
    assert!(
        charts
            .iter()
            .any(|(title, _)| title.starts_with("CPU per 250 ms")),
        "{charts:?}"
    );
    for (title, points) in &charts {
        assert!(*points > 0, "report chart {title:?} has data");
    }
    let axes = browser
        .eval("return Array.from(document.querySelectorAll('.u-axis')).length")
        .await;
    assert!(axes.as_u64().unwrap() >= 8, "every chart has both axes");
    browser.screenshot("report.png").await;
    browser.close().await;
    app.stop().await;
    env.cleanup().await;
}
