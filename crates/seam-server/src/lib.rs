//! Seam's HTTP API.
//!
//! - [`router`] builds the axum router over an [`AppState`]; tests call it in-process or through [`serve`].
//! - `collect`: the Segment-compatible collection endpoints (`/v1/identify` … `/v1/batch` and the short paths).
//! - `profiles`: the profiles API (secret key).
//! - `segments`: the segments API: definitions, preview, members, a profile's segments, explain.
//! - `computed`: the computed traits API.
//! - [`error::ApiError`]: the one error shape, `{"code", "message", "errors"}`, with its status table.
//! - [`metrics::Metrics`]: Prometheus counters and the acknowledgement latency histogram.

mod auth;
mod collect;
mod computed;
pub mod dispatch;
pub mod error;
mod journeys;
pub mod metrics;
mod profiles;
mod segments;

use std::future::Future;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use phonenumber::country::Id as Region;
use seam_core::Clock;
use seam_ingest::Limits;
use seam_store::Store;
use tokio::net::TcpListener;

pub use error::ApiError;
pub use metrics::Metrics;

/// The OpenAPI document served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Settings of the HTTP API.
#[derive(Debug, Clone, Default)]
pub struct ApiSettings {
    pub limits: Limits,
    /// Region for phone numbers written without a country code.
    pub default_region: Option<Region>,
}

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub settings: Arc<ApiSettings>,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    pub fn new(store: Store, clock: Arc<dyn Clock>, settings: ApiSettings) -> Self {
        Self {
            store,
            clock,
            settings: Arc::new(settings),
            metrics: Arc::new(Metrics::default()),
        }
    }
}

/// The whole API as a router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/{call}", post(collect::collect))
        .route("/v1/profiles/{reference}", get(profiles::get_profile))
        .route("/v1/profiles/{reference}/events", get(profiles::get_events))
        .route(
            "/v1/profiles/{reference}/segments",
            get(segments::of_profile),
        )
        .route(
            "/v1/computed-traits",
            get(computed::list).post(computed::create),
        )
        .route(
            "/v1/computed-traits/{id}",
            get(computed::get)
                .put(computed::update)
                .delete(computed::delete),
        )
        .route("/v1/segments", get(segments::list).post(segments::create))
        .route("/v1/segments/preview", post(segments::preview))
        .route(
            "/v1/segments/{id}",
            get(segments::get)
                .put(segments::update)
                .delete(segments::delete),
        )
        .route("/v1/segments/{id}/members", get(segments::members))
        .route(
            "/v1/segments/{id}/explain/{reference}",
            get(segments::explain_for),
        )
        .route("/v1/templates", get(journeys::list_templates))
        .route(
            "/v1/templates/{id}",
            get(journeys::get_template)
                .put(journeys::put_template)
                .delete(journeys::delete_template),
        )
        .route(
            "/v1/templates/{id}/preview",
            post(journeys::preview_template),
        )
        .route("/v1/journeys", get(journeys::list_journeys))
        .route("/v1/journeys/validate", post(journeys::validate_journey))
        .route(
            "/v1/journeys/{id}",
            get(journeys::get_journey)
                .put(journeys::put_journey)
                .delete(journeys::delete_journey),
        )
        .route(
            "/v1/journeys/{id}/activate",
            post(journeys::activate_journey),
        )
        .route("/v1/journeys/{id}/pause", post(journeys::pause_journey))
        .route("/v1/journeys/{id}/enter", post(journeys::enter_journey))
        .route("/v1/journeys/{id}/stats", get(journeys::journey_stats))
        .route(
            "/v1/profiles/{reference}/journeys",
            get(journeys::of_profile),
        )
        .route("/v1/messages", get(journeys::messages))
        .route("/v1/messages/{key}/outcome", post(journeys::report_outcome))
        .route("/v1/messages/{key}/replay", post(journeys::replay_message))
        .route("/v1/suppressions", get(journeys::list_suppressions))
        .route(
            "/v1/suppressions/{address}",
            axum::routing::put(journeys::put_suppression).delete(journeys::delete_suppression),
        )
        .route("/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::render))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes requests in flight.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

async fn healthz(
    axum::extract::State(s): axum::extract::State<AppState>,
) -> axum::Json<serde_json::Value> {
    use std::sync::atomic::Ordering;
    let st = s.store.stats();
    axum::Json(serde_json::json!({
        "status": "ok",
        "log_seq": st.log_seq.load(Ordering::Relaxed),
        "applied_seq": st.applied_seq.load(Ordering::Relaxed),
        "pending_evaluations": st.pending_evaluations.load(Ordering::Relaxed).max(0),
    }))
}

async fn not_found() -> ApiError {
    ApiError::new(404, "not_found", "no such endpoint; see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        405,
        "method_not_allowed",
        "this endpoint does not take that method; see /openapi.json",
    )
}
