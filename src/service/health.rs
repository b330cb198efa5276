//! The health check: one HTTP GET on loopback. A 2xx answer is healthy.

use std::time::Duration;

use super::Started;
use crate::resource::ResourceError;

/// How long one health request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// First and longest pause between health requests while waiting.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
const LONGEST_PAUSE: Duration = Duration::from_secs(2);
/// Without a health URL, a service counts as up once it has run this long.
const SETTLE: Duration = Duration::from_secs(1);

/// A client for health requests: no proxy (the service is local).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(PROBE_TIMEOUT)
        .build()
        .unwrap_or_default()
}

/// One request: `Ok` on a 2xx answer, else what went wrong, in words.
pub async fn probe(client: &reqwest::Client, url: &str) -> Result<(), String> {
    match client.get(url).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("{url} answered {}", r.status())),
        Err(e) if e.is_timeout() => Err(format!(
            "{url} did not answer within {}s",
            PROBE_TIMEOUT.as_secs()
        )),
        Err(e) if e.is_connect() => Err(format!("nothing answers on {url}")),
        Err(e) => Err(format!("{url}: {e}")),
    }
}

/// Waits until `url` answers, with growing pauses, up to `timeout`; stops
/// early when the service exits. Without a URL, waits until it has run a
/// moment. The error says why (the caller adds the log's tail).
pub async fn wait(
    url: Option<&str>,
    timeout: Duration,
    started: &mut Started,
) -> Result<(), ResourceError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let client = client();
    let mut pause = FIRST_PAUSE;
    loop {
        if let Some(exited) = started.exited() {
            return Err(ResourceError::new(format!(
                "the service stopped before it became healthy: {exited}"
            )));
        }
        let last = match url {
            Some(url) => match probe(&client, url).await {
                Ok(()) => return Ok(()),
                Err(why) => why,
            },
            None => {
                tokio::time::sleep(SETTLE).await;
                if let Some(exited) = started.exited() {
                    return Err(ResourceError::new(format!(
                        "the service stopped right after it started: {exited}"
                    )));
                }
                return Ok(());
            }
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(ResourceError::new(format!(
                "the service did not become healthy within {}: {last}",
                humantime::format_duration(timeout)
            )));
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}
