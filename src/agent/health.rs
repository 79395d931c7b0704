//! The agent's health endpoint, for a DaemonSet's probes: `GET /healthz` answers 200 while the
//! agent runs; `GET /readyz` answers 200 once the routes, the nftables table and the conflist
//! are in place, 503 before and whenever a pass has failed since, and its body also lists the
//! node records the agent refused, with why; `GET /metrics` gives the anti-spoofing counters in
//! the Prometheus text format. Plain HTTP/1.1, one response per connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

/// Whether the node's network is ready, and what the agent has to say about it (one line per
/// note), shared between the agent loop and the endpoint.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>, Arc<Mutex<Vec<String>>>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    pub fn set_notes(&self, notes: Vec<String>) {
        *self.1.lock().unwrap_or_else(|e| e.into_inner()) = notes;
    }

    pub fn notes(&self) -> Vec<String> {
        self.1.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Serves the endpoint on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, ready: Readiness) {
    loop {
        let Ok((conn, peer)) = listener.accept().await else {
            continue;
        };
        let ready = ready.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(conn, &ready).await {
                debug!(%peer, "health request: {e}");
            }
        });
    }
}

/// Binds the endpoint's address; separate from [`serve`] so that a taken port fails the
/// agent's start rather than a background task.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

async fn answer(mut conn: TcpStream, ready: &Readiness) -> std::io::Result<()> {
    // The request line is all we need; probes send small requests.
    let mut buf = [0u8; 1024];
    let n = conn.read(&mut buf).await?;
    let request = String::from_utf8_lossy(&buf[..n]);
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let (status, mut body) = match path.split('?').next().unwrap_or("") {
        "/healthz" | "/livez" => ("200 OK", "ok\n".to_string()),
        "/readyz" if ready.is_ready() => ("200 OK", "ready\n".into()),
        "/readyz" => (
            "503 Service Unavailable",
            "routes, nftables table or conflist not in place yet\n".into(),
        ),
        // Read from the kernel at each scrape (nft runs in the agent's own namespace, the
        // node's), off the runtime's thread.
        "/metrics" => (
            "200 OK",
            tokio::task::spawn_blocking(|| super::antispoof::metrics(None))
                .await
                .map_err(std::io::Error::other)?,
        ),
        _ => (
            "404 Not Found",
            "try /healthz, /readyz or /metrics\n".into(),
        ),
    };
    if path.starts_with("/readyz") {
        for note in ready.notes() {
            body.push_str(&note);
            body.push('\n');
        }
    }
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(response.as_bytes()).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test(flavor = "current_thread")]
    async fn ready_only_once_told() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ready = Readiness::default();
        tokio::spawn(serve(listener, ready.clone()));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
        ready.set(true);
        ready.set_notes(vec!["refused evil: its name is not its key".into()]);
        let r = get(addr, "/readyz").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(
            r.ends_with("ready\nrefused evil: its name is not its key\n"),
            "{r}"
        );
        assert!(get(addr, "/other").await.starts_with("HTTP/1.1 404"));
    }
}
