//! The JSON API under `/v1` (and `/healthz`): each answer has the keys and numbers of the CLI
//! command it mirrors (`geolocate --json`, `predict --json`, `embed`'s tensors as lists).
//! Images come as a raw request body (one) or `multipart/form-data` (one per part); each is
//! decoded here, off the model's thread, so a bad one is answered alone.

use super::engine::{Answer, Engine, Task};
use super::page::Page;
use super::{ApiError, Limits};
use crate::eval::ranker::{parse_labels, DEFAULT_TEMPLATE};
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The OpenAPI 3 description of the routes below (`GET /v1/openapi.json`).
pub const OPENAPI: &str = include_str!("openapi.json");

/// Most labels one predict request may rank (each is a caption through the text tower).
pub const MAX_LABELS: usize = 1000;

#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub limits: Limits,
    /// Images decoded at once: one per core. More would only slow the model's thread, whose
    /// libtorch threads spin on the same cores.
    pub decoders: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    pub fn new(engine: Engine, limits: Limits) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            engine,
            limits,
            decoders: Arc::new(tokio::sync::Semaphore::new(cores)),
        }
    }
}

pub fn router(state: AppState, page: Arc<Page>) -> Router {
    let max_body = state.limits.max_body_bytes;
    Router::new()
        .route("/healthz", get(health))
        .route("/v1/model", get(model))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/geolocate", post(geolocate))
        .route("/v1/predict", post(predict))
        .route("/v1/embed", post(embed))
        .merge(super::page::routes(page))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn health(State(s): State<AppState>) -> Json<Value> {
    let st = &s.engine.stats;
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    Json(json!({
        "status": "ok",
        "images": n(&st.images),
        "batches": n(&st.batches),
        "shared_batches": n(&st.shared_batches),
        "largest_batch": n(&st.largest_batch),
        "refused_full": n(&st.refused_full),
    }))
}

async fn model(State(s): State<AppState>) -> Json<Value> {
    Json((*s.engine.info).clone())
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route {} {}: see /v1/openapi.json",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} does not take {}: see /v1/openapi.json",
            request.uri().path(),
            request.method()
        ),
    )
}

#[derive(Deserialize)]
struct NameQuery {
    /// The name a raw-body image is answered under (default "image").
    name: Option<String>,
}

async fn geolocate(
    State(s): State<AppState>,
    Query(q): Query<NameQuery>,
    request: Request,
) -> Response {
    answer(&s, Ok(Task::Geolocate), q.name, request, "guess").await
}

#[derive(Deserialize)]
struct PredictQuery {
    name: Option<String>,
    labels: Option<String>,
    template: Option<String>,
    top_k: Option<usize>,
    #[serde(default)]
    zero_shot: bool,
}

async fn predict(
    State(s): State<AppState>,
    query: Result<Query<PredictQuery>, QueryRejection>,
    request: Request,
) -> Response {
    let (task, name) = match query {
        Ok(Query(q)) => (predict_task(&q), q.name),
        Err(e) => (Err(ApiError::bad_request(e.body_text())), None),
    };
    answer(&s, task, name, request, "ranking").await
}

fn predict_task(q: &PredictQuery) -> Result<Task, ApiError> {
    let labels = match &q.labels {
        Some(list) => {
            Some(parse_labels(list).map_err(|e| ApiError::bad_request(format!("{e:#}")))?)
        }
        None => None,
    };
    if labels.as_ref().is_some_and(|l| l.len() > MAX_LABELS) {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_LABELS} labels per request"
        )));
    }
    let top_k = q.top_k.unwrap_or(5);
    if !(1..=MAX_LABELS).contains(&top_k) {
        return Err(ApiError::bad_request(format!(
            "top_k must be in 1..={MAX_LABELS}, not {top_k}"
        )));
    }
    Ok(Task::Predict {
        labels,
        template: q
            .template
            .clone()
            .unwrap_or_else(|| DEFAULT_TEMPLATE.into()),
        zero_shot: q.zero_shot,
        top_k,
    })
}

#[derive(Deserialize)]
struct Texts {
    texts: Vec<String>,
}

/// Images (raw or multipart) → `{"images", "image_embeds"}`; `{"texts": [...]}` as JSON →
/// `{"texts", "text_embeds"}` (`embed`'s unnormalised projections).
async fn embed(
    State(s): State<AppState>,
    Query(q): Query<NameQuery>,
    request: Request,
) -> Response {
    if !content_type_is(request.headers(), "application/json") {
        return answer(&s, Ok(Task::Embed), q.name, request, "image_embeds").await;
    }
    let texts = match Json::<Texts>::from_request(request, &()).await {
        Ok(Json(t)) => t.texts,
        Err(e) => {
            return ApiError::bad_request(format!("expected {{\"texts\": [\"...\"]}}: {e}"))
                .into_response()
        }
    };
    if texts.is_empty() || texts.len() > MAX_LABELS {
        return ApiError::bad_request(format!("give 1 to {MAX_LABELS} texts")).into_response();
    }
    let embeds = match s.engine.texts(texts.clone()) {
        Ok(answer) => answer
            .await
            .unwrap_or_else(|_| Err(ApiError::internal("the model thread stopped"))),
        Err(e) => Err(e),
    };
    match embeds {
        Ok(rows) => Json(json!({"texts": texts, "text_embeds": rows})).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The request's images, each decoded and queued as `task`, answered as a list of
/// `{"image": name, key: answer}` (an image that failed: `{"image", "error"}` in its place).
/// A request of one image that fails is answered with that image's error status.
async fn answer(
    s: &AppState,
    task: Result<Task, ApiError>,
    name: Option<String>,
    request: Request,
    key: &str,
) -> Response {
    // The body is read before a bad parameter is answered: a client still sending it would
    // otherwise see a broken connection instead of the reason.
    let images = match read_images(s, name, request).await {
        Ok(images) => images,
        Err(e) => return e.into_response(),
    };
    let task = match task {
        Ok(task) => task,
        Err(e) => return e.into_response(),
    };
    let mut pending = Vec::with_capacity(images.len());
    for (name, bytes) in images {
        let pre = s.engine.preprocess.clone();
        let decoders = s.decoders.clone();
        let decoded = tokio::spawn(async move {
            let _permit = decoders.acquire_owned().await.expect("never closed");
            tokio::task::spawn_blocking(move || {
                let mut out = vec![0f32; pre.output_len()];
                pre.apply_bytes(&bytes, &mut out).map(|()| out)
            })
            .await
        });
        pending.push((name, task.clone(), decoded));
    }
    // Every image decoded before any is queued, so that a request's images share a batch.
    let mut decoded = Vec::with_capacity(pending.len());
    for (name, task, decoding) in pending {
        let pixels = match decoding.await {
            Ok(Ok(Ok(pixels))) => Ok(pixels),
            Ok(Ok(Err(e))) => Err(ApiError::from_image(&name, &e)),
            _ => Err(ApiError::internal(format!("{name}: the decoder stopped"))),
        };
        decoded.push((name, task, pixels));
    }
    let queued: Vec<_> = decoded
        .into_iter()
        .map(|(name, task, pixels)| (name, pixels.and_then(|p| s.engine.image(task, p))))
        .collect();
    let mut rows = Vec::with_capacity(queued.len());
    let mut failures = vec![];
    for (name, answer) in queued {
        let result = match answer {
            Ok(receiver) => receiver
                .await
                .unwrap_or_else(|_| Err(ApiError::internal("the model thread stopped"))),
            Err(e) => Err(e),
        };
        rows.push(match result {
            Ok(Answer::Embedding(e)) if key == "image_embeds" => {
                json!({"image": name, "image_embed": e})
            }
            Ok(a) => json!({"image": name, key: a}),
            Err(e) => {
                failures.push(e.clone());
                json!({"image": name, "error": e.json()})
            }
        });
    }
    // A full queue is the server's state, not the image's: the whole request is to be retried.
    if let Some(busy) = failures
        .iter()
        .find(|e| e.status == StatusCode::SERVICE_UNAVAILABLE)
    {
        return busy.clone().into_response();
    }
    if rows.len() == 1 && failures.len() == 1 {
        return failures.remove(0).into_response();
    }
    if key == "image_embeds" {
        return Json(embeds_answer(rows)).into_response();
    }
    Json(Value::Array(rows)).into_response()
}

/// `embed`'s shape: the images and their rows of `image_embeds` in one order (failed images
/// listed apart under `errors`).
fn embeds_answer(rows: Vec<Value>) -> Value {
    let (mut images, mut embeds, mut errors) = (vec![], vec![], vec![]);
    for mut row in rows {
        match row.get_mut("image_embed").map(Value::take) {
            Some(e) => {
                images.push(row["image"].take());
                embeds.push(e);
            }
            None => errors.push(row),
        }
    }
    json!({"images": images, "image_embeds": embeds, "errors": errors})
}

/// The images of a request (see `receive_images`), within the client timeout (408 after it).
async fn read_images(
    s: &AppState,
    name: Option<String>,
    request: Request,
) -> Result<Vec<(String, Bytes)>, ApiError> {
    let timeout = s.limits.timeout;
    match tokio::time::timeout(timeout, receive_images(s, name, request)).await {
        Ok(images) => images,
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s (--timeout-s)",
                timeout.as_secs()
            ),
        )),
    }
}

/// The images of a request: its raw body (named `name`, default "image"), or each part of a
/// `multipart/form-data` body (named by its file name, else its field name). A body declared
/// longer than the limit is refused before it is read.
async fn receive_images(
    s: &AppState,
    name: Option<String>,
    request: Request,
) -> Result<Vec<(String, Bytes)>, ApiError> {
    let max = s.limits.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over the server's limit of {max} bytes (--max-body-mb)"),
        )
    };
    if declared_length(request.headers()).is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let images = if content_type_is(request.headers(), "multipart/form-data") {
        let mut form = Multipart::from_request(request, &())
            .await
            .map_err(|e| ApiError::bad_request(format!("{e}")))?;
        let mut images = vec![];
        let part_error = |e: axum::extract::multipart::MultipartError| match e.status() {
            StatusCode::PAYLOAD_TOO_LARGE => too_large(),
            status => ApiError::new(status, format!("the multipart body: {}", e.body_text())),
        };
        while let Some(field) = form.next_field().await.map_err(part_error)? {
            let name = field
                .file_name()
                .or(field.name())
                .unwrap_or("image")
                .to_string();
            images.push((name, field.bytes().await.map_err(part_error)?));
        }
        images
    } else {
        let body: Body = request.into_body();
        let bytes = axum::body::to_bytes(body, max).await.map_err(|e| {
            let inner = e.into_inner();
            match inner.downcast_ref::<http_body_util::LengthLimitError>() {
                Some(_) => too_large(),
                None => {
                    ApiError::bad_request(format!("the request body could not be read: {inner}"))
                }
            }
        })?;
        vec![(name.unwrap_or_else(|| "image".into()), bytes)]
    };
    if images.is_empty() || images.iter().all(|(_, b)| b.is_empty()) {
        return Err(ApiError::bad_request(
            "no image in the request: send one as the body, or several as multipart/form-data parts",
        ));
    }
    Ok(images)
}

/// Whether the request's content type is `kind` (parameters such as a boundary aside).
fn content_type_is(headers: &HeaderMap, kind: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(kind))
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
