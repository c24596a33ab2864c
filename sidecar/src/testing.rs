//! A scripted API server for unit tests: kube's `Client` over a function
//! that answers each request, keeping every request it was sent. A 403 or
//! a hanging call is then a few lines of test, not an end-to-end scenario.
//! The webhook's unit tests use it too (feature `testing`).

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use axum::{
    body::Body,
    http::{Request as HttpRequest, Response, StatusCode},
};
use kube::Client;
use serde_json::Value;

/// A request as the scripted API server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The JSON body; `Null` when there is none.
    pub body: Value,
}

type Answer = dyn Fn(&Request) -> (u16, Value) + Send + Sync;
type Hang = dyn Fn(&Request) -> bool + Send + Sync;

#[derive(Clone)]
pub struct ScriptedApi {
    answer: Arc<Answer>,
    hang: Arc<Hang>,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl ScriptedApi {
    /// An API server that answers every request with `answer`'s status and JSON.
    pub fn new(answer: impl Fn(&Request) -> (u16, Value) + Send + Sync + 'static) -> Self {
        Self {
            answer: Arc::new(answer),
            hang: Arc::new(|_| false),
            seen: Arc::default(),
        }
    }

    /// Never answers the requests `hang` picks (they are still recorded), as
    /// a frozen API server that keeps its connections open.
    pub fn hanging_when(mut self, hang: impl Fn(&Request) -> bool + Send + Sync + 'static) -> Self {
        self.hang = Arc::new(hang);
        self
    }

    /// A client of this server (default namespace `default`).
    pub fn client(&self) -> Client {
        let api = self.clone();
        let service = tower::service_fn(move |req: HttpRequest<kube::client::Body>| {
            let api = api.clone();
            async move {
                let (parts, body) = req.into_parts();
                let bytes = axum::body::to_bytes(Body::new(body), usize::MAX)
                    .await
                    .unwrap_or_default();
                let request = Request {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                };
                let (status, answer) = (api.answer)(&request);
                let hang = (api.hang)(&request);
                api.seen.lock().expect("not poisoned").push(request);
                if hang {
                    std::future::pending::<()>().await;
                }
                let response = Response::builder()
                    .status(StatusCode::from_u16(status).expect("a valid status code"))
                    .header("content-type", "application/json")
                    .body(Body::from(answer.to_string()))
                    .expect("a valid response");
                Ok::<_, Infallible>(response)
            }
        });
        Client::new(service, "default")
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.seen.lock().expect("not poisoned").clone()
    }

    /// `METHOD path: <the body's field>` for every request so far: what a
    /// test compares, e.g. the `message` of each Event sent.
    pub fn sent(&self, field: &str) -> Vec<String> {
        self.requests()
            .into_iter()
            .map(|r| {
                format!(
                    "{} {}: {}",
                    r.method,
                    r.path,
                    r.body[field].as_str().unwrap_or("-")
                )
            })
            .collect()
    }

    /// Waits until `n` requests have come (work spawned in the background).
    pub async fn wait_for(&self, n: usize, timeout: std::time::Duration) {
        let arrived = async {
            while self.seen.lock().expect("not poisoned").len() < n {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(timeout, arrived)
            .await
            .unwrap_or_else(|_| panic!("{n} requests within {timeout:?}: {:?}", self.requests()));
    }
}

/// Sends `request` to `router` in-process: the status and the body.
pub async fn call(router: axum::Router, request: HttpRequest<Body>) -> (StatusCode, Vec<u8>) {
    use tower::ServiceExt as _;
    let response = router.oneshot(request).await.expect("infallible");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("the body");
    (status, body.to_vec())
}

/// GETs `path` from `router` in-process: the status and the body as text
/// (the sidecar's status server and the webhook's health server).
pub async fn get(router: axum::Router, path: &str) -> (StatusCode, String) {
    let request = HttpRequest::get(path)
        .body(Body::empty())
        .expect("a request");
    let (status, body) = call(router, request).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// As the API server answers a create: 201 and the object.
pub fn created(request: &Request) -> (u16, Value) {
    (201, request.body.clone())
}

/// As the API server answers once RBAC no longer allows the call.
pub fn forbidden(request: &Request) -> (u16, Value) {
    let message = format!("{} {} is forbidden", request.method, request.path);
    (
        403,
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "message": message, "reason": "Forbidden", "code": 403}),
    )
}

thread_local! {
    /// The log lines of this thread since `capture_logs`.
    static LOGS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Keeps every event as a line: `LEVEL message=... field=...`.
struct Capture;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Line(String);
        impl tracing::field::Visit for Line {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={value:?}", field.name()));
            }
        }
        let mut line = Line(event.metadata().level().to_string());
        event.record(&mut line);
        LOGS.with(|logs| logs.borrow_mut().push(line.0));
    }
}

/// Starts keeping this thread's log lines (a `#[tokio::test]` runs its
/// tasks on its own thread). The subscriber is process-wide and set once: a
/// thread-scoped one misses events while tests on other threads register
/// the same callsites.
pub fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use tracing_subscriber::layer::SubscriberExt as _;
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture))
            .expect("no other test sets a global subscriber");
    });
    LOGS.with(|logs| logs.borrow_mut().clear());
}

/// This thread's log lines since `capture_logs`.
pub fn logged() -> Vec<String> {
    LOGS.with(|logs| logs.borrow().clone())
}
