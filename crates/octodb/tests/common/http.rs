//! Talking to a primary's admin console as a browser and as Prometheus do.

/// An HTTP agent that looks at redirects instead of following them.
pub fn agent() -> ureq::Agent {
    // Redirects are looked at, not followed: the login answers with its cookie and a 303.
    ureq::AgentBuilder::new().redirects(0).build()
}

/// Status and body of a request, whatever the status.
pub fn call(r: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match r {
        Ok(resp) => (resp.status(), resp.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap_or_default()),
        Err(e) => panic!("request failed: {e}"),
    }
}

/// The console's base URL (`PRAGMA admin_address`), without its trailing slash.
pub fn admin_url(p: &octodb::Connection) -> String {
    let url = super::text(p, "PRAGMA admin_address");
    url.trim_end_matches('/').to_string()
}

/// Scrape /metrics with the bearer token and parse it as Prometheus does.
pub fn scrape(base: &str, token: &str) -> prometheus_parse::Scrape {
    let (status, body) = call(
        agent()
            .get(&format!("{base}/metrics"))
            .set("Authorization", &format!("Bearer {token}"))
            .call(),
    );
    assert_eq!(status, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("the metrics parse as Prometheus text")
}

/// The value of sample `name` (summed over its labels).
pub fn value(scrape: &prometheus_parse::Scrape, name: &str) -> Option<f64> {
    let mut found = None;
    for s in scrape.samples.iter().filter(|s| s.metric == name) {
        let v = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        found = Some(found.unwrap_or(0.0) + v);
    }
    found
}
