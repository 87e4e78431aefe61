//! A local HTTP endpoint that records every request it receives (path and body) and answers
//! 200 with an empty body: the OTLP/HTTP receiver of `ops_otel` (an empty body is an empty
//! protobuf `Export...ServiceResponse`) and the webhook listener of `ops_alerts`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::Uri;

/// One request received: its path and body.
pub type Received = (String, Vec<u8>);

/// The running endpoint (served on its own thread until the test process ends).
pub struct HttpSink {
    /// `127.0.0.1:port` it listens on.
    pub addr: std::net::SocketAddr,
    /// Every request so far, in arrival order.
    received: Arc<Mutex<Vec<Received>>>,
}

impl HttpSink {
    /// Listen on a free local port.
    pub fn start() -> Self {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let store = received.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("sink runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
                tx.send(listener.local_addr().expect("sink addr")).expect("report sink addr");
                let app = axum::Router::new().fallback(move |uri: Uri, body: Bytes| {
                    let store = store.clone();
                    async move {
                        store.lock().expect("sink store").push((uri.path().to_string(), body.to_vec()));
                        ""
                    }
                });
                axum::serve(listener, app).await.expect("serve sink");
            });
        });
        let addr = rx.recv_timeout(Duration::from_secs(10)).expect("sink did not start");
        Self { addr, received }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("sink store").clone()
    }

    /// Wait (bounded) until `done(&received)` holds; panics naming `what` otherwise.
    pub fn until(&self, limit: Duration, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.received();
            if done(&got) {
                return got;
            }
            let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
            assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}; requests received: {paths:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
