//! Clients of a Service's ClusterIP, as the bench and the end-to-end tests
//! run them: each sends requests to the demo app at a fixed rate, opening a
//! new connection per request or keeping connections alive, and records
//! which pod answered each one, or why it failed.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::time::MissedTickBehavior;

/// How long a client waits for one answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// Seconds since the epoch, as the samples record it.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Connections {
    /// A new TCP connection per request.
    New,
    /// Connections kept alive and reused.
    KeepAlive,
}

impl Connections {
    pub const BOTH: [Connections; 2] = [Connections::New, Connections::KeepAlive];
    pub fn label(self) -> &'static str {
        match self {
            Connections::New => "new connection per request",
            Connections::KeepAlive => "keep-alive",
        }
    }
}

/// One request: when it was sent and when it ended (s since the epoch),
/// and the pod that answered or the error.
#[derive(Clone, Debug)]
pub struct Sample {
    pub sent: f64,
    pub done: f64,
    pub answer: Result<String, String>,
}

/// A client calling `url` `rate` times a second, each request in a task of
/// its own so that a slow answer does not hold the next one back.
pub struct Client {
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    pub fn start(connections: Connections, url: String, rate: u32) -> anyhow::Result<Client> {
        let mut builder = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
        if connections == Connections::New {
            builder = builder.pool_max_idle_per_host(0);
        }
        let http = builder.build()?;
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let s = samples.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
            tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let (http, url, s) = (http.clone(), url.clone(), s.clone());
                tokio::spawn(async move {
                    let sent = now();
                    let answer = match http.get(&url).send().await {
                        Ok(r) if r.status().is_success() => match r.text().await {
                            Ok(body) => body
                                .trim()
                                .strip_prefix("hello from ")
                                .map(str::to_string)
                                .ok_or(format!("unexpected answer {body:?}")),
                            Err(e) => Err(error_kind(&e)),
                        },
                        Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
                        Err(e) => Err(error_kind(&e)),
                    };
                    let done = now();
                    s.lock()
                        .expect("not poisoned")
                        .push(Sample { sent, done, answer });
                });
            }
        });
        Ok(Client { samples, task })
    }

    /// A client of the demo app's line protocol (`--tcp-addr`) at `addr`:
    /// one long-lived TCP connection, a line sent `rate` times a second and
    /// the answering pod's name read back before the next. A connection
    /// that fails or closes is recorded as an error and opened again at the
    /// next tick, as a client with a reconnecting driver does.
    pub fn start_tcp(addr: String, rate: u32) -> Client {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let s = samples.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
            tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
            let mut conn: Option<BufReader<tokio::net::TcpStream>> = None;
            loop {
                tick.tick().await;
                let sent = now();
                let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
                    if conn.is_none() {
                        let stream = tokio::net::TcpStream::connect(&addr)
                            .await
                            .map_err(|e| format!("connect error: {e}"))?;
                        conn = Some(BufReader::new(stream));
                    }
                    let c = conn.as_mut().expect("just connected");
                    c.get_mut()
                        .write_all(b"who\n")
                        .await
                        .map_err(|e| format!("write: {e}"))?;
                    let mut line = String::new();
                    match c.read_line(&mut line).await {
                        Ok(0) => Err("closed by the server".to_owned()),
                        Ok(_) => Ok(line.trim().to_owned()),
                        Err(e) => Err(format!("read: {e}")),
                    }
                })
                .await
                .unwrap_or_else(|_| Err("timeout".to_owned()));
                if answer.is_err() {
                    conn = None;
                }
                let done = now();
                s.lock()
                    .expect("not poisoned")
                    .push(Sample { sent, done, answer });
            }
        });
        Client { samples, task }
    }

    /// An HTTP/2 client with prior knowledge, as gRPC's channels are: one
    /// connection to `authority` (`ip:port`) carrying every request as a
    /// stream of its own, `rate` a second. A connection that closes is
    /// opened again at the next tick; requests on it in flight fail and are
    /// recorded as errors.
    pub fn start_h2(authority: String, rate: u32) -> Client {
        use http_body_util::{BodyExt, Empty};
        use hyper::{
            body::Bytes,
            client::conn::http2::{self, SendRequest},
        };
        use hyper_util::rt::{TokioExecutor, TokioIo};

        async fn connect(authority: &str) -> Result<SendRequest<Empty<Bytes>>, String> {
            let stream = tokio::net::TcpStream::connect(authority)
                .await
                .map_err(|e| format!("connect error: {e}"))?;
            let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            tokio::spawn(connection);
            Ok(sender)
        }

        let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
        let s = samples.clone();
        let uri = format!("http://{authority}/");
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
            tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
            let mut conn: Option<SendRequest<Empty<Bytes>>> = None;
            loop {
                tick.tick().await;
                let sent = now();
                if conn.as_ref().is_none_or(SendRequest::is_closed) {
                    match tokio::time::timeout(REQUEST_TIMEOUT, connect(&authority)).await {
                        Ok(Ok(sender)) => conn = Some(sender),
                        failed => {
                            let answer = Err(failed
                                .map_or("timeout".to_owned(), |r| r.err().unwrap_or_default()));
                            let done = now();
                            s.lock()
                                .expect("not poisoned")
                                .push(Sample { sent, done, answer });
                            continue;
                        }
                    }
                }
                let mut sender = conn.clone().expect("just connected");
                let (uri, s) = (uri.clone(), s.clone());
                tokio::spawn(async move {
                    let request = hyper::Request::get(uri)
                        .body(Empty::new())
                        .expect("a valid request");
                    let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
                        sender
                            .ready()
                            .await
                            .map_err(|e| format!("connection: {e}"))?;
                        let response = sender
                            .send_request(request)
                            .await
                            .map_err(|e| format!("request: {e}"))?;
                        if !response.status().is_success() {
                            return Err(format!("HTTP {}", response.status().as_u16()));
                        }
                        let body = response
                            .into_body()
                            .collect()
                            .await
                            .map_err(|e| format!("body: {e}"))?
                            .to_bytes();
                        let body = String::from_utf8_lossy(&body);
                        body.trim()
                            .strip_prefix("hello from ")
                            .map(str::to_string)
                            .ok_or(format!("unexpected answer {body:?}"))
                    })
                    .await
                    .unwrap_or_else(|_| Err("timeout".to_owned()));
                    let done = now();
                    s.lock()
                        .expect("not poisoned")
                        .push(Sample { sent, done, answer });
                });
            }
        });
        Client { samples, task }
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().expect("not poisoned").clone()
    }

    /// Waits until the last `n` answers all came from `pod`: the client is
    /// steady on the active pod before a run acts.
    pub async fn wait_steady_on(&self, pod: &str, n: usize) -> anyhow::Result<()> {
        let deadline = now() + 60.0;
        loop {
            let mut s = self.samples();
            s.sort_by(|a, b| a.sent.total_cmp(&b.sent));
            let last: Vec<_> = s.iter().rev().take(n).collect();
            if last.len() == n && last.iter().all(|x| x.answer.as_deref() == Ok(pod)) {
                return Ok(());
            }
            anyhow::ensure!(
                now() < deadline,
                "the client is not answered by {pod} alone; last: {:?}",
                last.first().map(|x| &x.answer)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sent at or after `t0` and answered by `pod`: the first answer's time.
    pub fn first_answer_by(&self, pod: &str, t0: f64) -> Option<f64> {
        self.samples()
            .iter()
            .filter(|s| s.sent >= t0 && s.answer.as_deref() == Ok(pod))
            .map(|s| s.done)
            .min_by(f64::total_cmp)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        // Only the OS's reason (refused, reset, unreachable): it tells an
        // endpoint kube-proxy rejects from one that did not answer, and
        // keeps the kinds few enough to count.
        match io_cause(e) {
            Some(kind) => format!("connect error: {kind}"),
            None => "connect error".into(),
        }
    } else {
        // The chain names the cause (reset by peer, closed before answering).
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            msg = format!("{msg}: {s}");
            src = s.source();
        }
        msg
    }
}

/// The kind of the I/O error under `e`, if there is one.
fn io_cause(e: &reqwest::Error) -> Option<std::io::ErrorKind> {
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        src = s.source();
    }
    None
}

/// One client of each kind calling `url` `rate` times a second, returned
/// once each has been answered by `pod` alone for its last 20 requests.
pub async fn both_steady_on(
    url: &str,
    rate: u32,
    pod: &str,
) -> anyhow::Result<Vec<(Connections, Client)>> {
    let clients = Connections::BOTH
        .iter()
        .map(|&c| Client::start(c, url.to_owned(), rate).map(|cl| (c, cl)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (_, c) in &clients {
        c.wait_steady_on(pod, 20).await?;
    }
    Ok(clients)
}

/// A client of `connections`, calling the ClusterIP of `service` in `ns`
/// `rate` times a second, once it is answered by `holder` alone.
pub async fn client_through(
    ns: &crate::harness::TestNamespace,
    service: &str,
    connections: Connections,
    rate: u32,
    holder: &str,
) -> Client {
    let ip = ns.cluster_ip(service).await;
    let _ = crate::harness::http(); // installs the TLS provider reqwest needs
    let client = Client::start(connections, format!("http://{ip}/"), rate).expect("an HTTP client");
    client
        .wait_steady_on(holder, 20)
        .await
        .expect("steady on the holder");
    client
}
