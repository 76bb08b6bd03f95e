//! The double's HTTP server. It runs its own accept loop (rather than `axum::serve`) so that a handler can close
//! the connection it arrived on without answering: that is how dropped connections and lost answers look to a
//! client.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower::ServiceExt;

use crate::{api, AcceptedEvent, DoubleState, Faults, StripeDouble};

/// Closes the connection of the request it was handed to, unanswered.
#[derive(Clone)]
pub(super) struct Hangup(Arc<Notify>);

impl Hangup {
    /// Signals the connection task and waits for it to drop this request (and the connection) for good.
    pub(super) async fn now(&self) -> axum::response::Response {
        self.0.notify_one();
        std::future::pending().await
    }
}

/// Serves `double` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, double: StripeDouble) -> std::io::Result<()> {
    let router = Router::new()
        .route("/_double/faults", post(set_faults).get(get_faults))
        .route("/_double/state", get(state))
        .route("/_double/events", get(events))
        .fallback(api::handle)
        .with_state(double);
    loop {
        let (stream, _) = listener.accept().await?;
        let router = router.clone();
        tokio::spawn(async move {
            let hangup = Arc::new(Notify::new());
            let handle = Hangup(hangup.clone());
            let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(handle.clone());
                router.clone().oneshot(request)
            });
            let connection = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                // Dropping the connection future closes the socket without an answer.
                _ = hangup.notified() => {}
            }
        });
    }
}

async fn set_faults(State(double): State<StripeDouble>, Json(faults): Json<Faults>) -> Json<Faults> {
    double.set_faults(faults);
    Json(double.faults())
}

async fn get_faults(State(double): State<StripeDouble>) -> Json<Faults> {
    Json(double.faults())
}

async fn state(State(double): State<StripeDouble>) -> Json<DoubleState> {
    Json(double.state())
}

async fn events(State(double): State<StripeDouble>) -> Json<Vec<AcceptedEvent>> {
    Json(double.events())
}
