//! The REST API: `/v1/...` routes, small handlers over [`App`].

mod e2b;
mod events;
mod hosts;
mod identity;
mod sandboxes;
mod templates;

use utoipa::OpenApi;

pub use identity::{create_user_with_team, issue_key};

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::routing::{delete, get, post};
use serde::de::DeserializeOwned;

use crate::App;
use crate::error::ApiError;

/// JSON body whose errors are ours: 400 naming the field, 413 when too large.
pub struct ApiJson<T>(pub T);

/// A body that could not be read: 413 when over the limit, else 400.
fn bytes_rejection(e: axum::extract::rejection::BytesRejection) -> ApiError {
    if e.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            http::StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "{}; bodies are limited to 2 MiB (send files through files/write)",
                e.body_text()
            ),
        )
    } else {
        ApiError::bad_request(e.body_text())
    }
}

fn json_rejection(e: JsonRejection) -> ApiError {
    match e {
        JsonRejection::JsonDataError(e) => {
            ApiError::bad_request(format!("invalid field: {}", e.body_text()))
        }
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::bad_request(format!("malformed JSON: {}", e.body_text()))
        }
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::bad_request("send the body as JSON with Content-Type: application/json")
        }
        JsonRejection::BytesRejection(e) => bytes_rejection(e),
        e => ApiError::bad_request(e.body_text()),
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|axum::Json(v)| ApiJson(v))
            .map_err(json_rejection)
    }
}

/// A JSON body that may be absent (then `T::default()`).
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(bytes_rejection)?;
        optional_json(&bytes).map(OptionalJson)
    }
}

/// A JSON body that may be empty or blank (then `T::default()`); errors
/// name the field, as [`ApiJson`]'s do.
pub(crate) fn optional_json<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    axum::Json::<T>::from_bytes(bytes)
        .map(|axum::Json(v)| v)
        .map_err(json_rejection)
}

pub use crate::store::rfc3339;

#[utoipa::path(get, path = "/health", tag = "meta", responses((status = 200, description = "The control plane answers", body = wrenn_api_types::Health)))]
async fn health() -> axum::Json<wrenn_api_types::Health> {
    axum::Json(wrenn_api_types::Health {
        status: "ok".into(),
    })
}

/// Declares the API key and bearer-token schemes.
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme,
        };
        let c = api.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Wrenn API",
        description = "Sandboxes for code that AI agents write. Every route but /health, /v1/auth and the agents' /v1/hosts/{register,refresh,heartbeat} needs `X-API-Key: wrn_…` (or `e2b_…`) or `Authorization: Bearer <token>`. The `e2b` routes are E2B's REST API (errors `{code, message}`); requests for `{port}-{sandbox}.{domain}` or with `E2b-Sandbox-Id` go to the sandbox proxy. Errors are `{\"error\":{\"code\",\"message\"}}`. Also served under /v1/capsules. WebSockets: GET /v1/sandboxes/{id}/exec/stream and /v1/sandboxes/{id}/pty."
    ),
    paths(
        health,
        identity::signup, identity::login,
        identity::create_key, identity::list_keys, identity::delete_key,
        identity::list_teams, identity::create_team, identity::list_members, identity::add_member, identity::remove_member,
        identity::list_invitations, identity::accept_invitation, identity::delete_invitation,
        identity::audit_logs,
        sandboxes::create, sandboxes::list, sandboxes::get_one, sandboxes::destroy,
        sandboxes::pause, sandboxes::resume, sandboxes::ping, sandboxes::metrics, sandboxes::set_public_ports, sandboxes::set_egress,
        sandboxes::exec::exec, sandboxes::exec::processes, sandboxes::exec::kill,
        sandboxes::files::file_read, sandboxes::files::file_write, sandboxes::files::file_list, sandboxes::files::file_mkdir, sandboxes::files::file_remove,
        templates::list_templates, templates::delete_template, events::events,
        hosts::create, hosts::list, hosts::get_one, hosts::set_tags, hosts::regenerate, hosts::delete,
        hosts::register, hosts::refresh, hosts::heartbeat,
        e2b::create, e2b::get_one, e2b::list_v1, e2b::list_v2, e2b::kill, e2b::set_timeout,
        e2b::refresh, e2b::pause, e2b::resume, e2b::connect, e2b::metrics, e2b::metrics_of_many, e2b::set_network,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail)),
    modifiers(&Security),
)]
pub struct ApiDoc;

async fn openapi_yaml() -> impl axum::response::IntoResponse {
    (
        [(http::header::CONTENT_TYPE, "application/yaml")],
        ApiDoc::openapi().to_yaml().expect("the spec renders"),
    )
}

/// Every route, behind the sandbox proxy (which takes the requests meant
/// for sandbox ports before any route sees them).
pub fn router(app: App) -> Router {
    let sandboxes = sandboxes::routes();
    Router::new()
        .merge(e2b::routes())
        .route("/health", get(health))
        .route("/openapi.yaml", get(openapi_yaml))
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi()))
        .route("/v1/auth/signup", post(identity::signup))
        .route("/v1/auth/login", post(identity::login))
        .route(
            "/v1/api-keys",
            get(identity::list_keys).post(identity::create_key),
        )
        .route("/v1/api-keys/{id}", delete(identity::delete_key))
        .route(
            "/v1/teams",
            get(identity::list_teams).post(identity::create_team),
        )
        .route(
            "/v1/teams/{id}/members",
            get(identity::list_members).post(identity::add_member),
        )
        .route(
            "/v1/teams/{id}/members/{user_id}",
            delete(identity::remove_member),
        )
        .route("/v1/invitations", get(identity::list_invitations))
        .route("/v1/invitations/{id}", delete(identity::delete_invitation))
        .route(
            "/v1/invitations/{id}/accept",
            post(identity::accept_invitation),
        )
        .route("/v1/audit-logs", get(identity::audit_logs))
        .route("/v1/templates", get(templates::list_templates))
        .route("/v1/templates/{name}", delete(templates::delete_template))
        .route("/v1/events/stream", get(events::events))
        .nest("/v1/hosts", hosts::routes())
        .nest("/v1/sandboxes", sandboxes.clone())
        .nest("/v1/capsules", sandboxes)
        .method_not_allowed_fallback(wrong_method)
        .fallback(no_route)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            crate::proxy::intercept,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
        .with_state(app)
}

/// Whether `path` is under E2B's REST API (which answers E2B's error
/// shape) rather than the native one.
fn is_e2b_path(path: &str) -> bool {
    // Wrenn's own routes are under /v1 (and a few at the root); every
    // other path is E2B's API, whose SDKs read only `{code, message}`
    // (`/snapshots`, `/volumes`, … that Wrenn lacks among them).
    let native = path == "/v1" || path.starts_with("/v1/");
    let root = ["/health", "/openapi.json", "/openapi.yaml", "/docs"]
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")));
    !native && !root
}

/// `e` in the shape of the API family `uri` belongs to.
fn in_family(uri: &http::Uri, e: ApiError) -> axum::response::Response {
    use axum::response::IntoResponse;
    if is_e2b_path(uri.path()) {
        e2b::E2bError::from(e).into_response()
    } else {
        e.into_response()
    }
}

/// 404 for a path no route has.
async fn no_route(uri: http::Uri) -> axum::response::Response {
    let e = ApiError::not_found(format!(
        "route {}; see /openapi.yaml for the API",
        uri.path()
    ));
    in_family(&uri, e)
}

/// 405 for a route that exists but not with this method.
async fn wrong_method(method: http::Method, uri: http::Uri) -> axum::response::Response {
    let e = ApiError::new(
        http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not take {method}; see /openapi.yaml for its methods",
            uri.path()
        ),
    );
    in_family(&uri, e)
}

/// The answer to a request whose handler panicked (a bug of ours): 500 in
/// the usual error shape; the panic hook has logged where it happened, and
/// the server goes on serving.
fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown".into());
    tracing::error!(panic = %what, "a request handler panicked");
    ApiError::internal(
        "the server hit a bug handling this request (it was logged); try again or report it",
    )
    .into_response()
}

#[cfg(test)]
mod body_tests {
    use super::{json_rejection, optional_json};
    use wrenn_api_types::processes::Exec as ExecReq;
    use wrenn_api_types::sandboxes::CreateSandbox as CreateSandboxReq;

    /// What `ApiJson` makes of a body.
    fn required<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, crate::error::ApiError> {
        axum::Json::<T>::from_bytes(b)
            .map(|axum::Json(v)| v)
            .map_err(json_rejection)
    }
    use proptest::prelude::*;

    /// Any JSON value, nested a few levels, with keys the requests use and
    /// others.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number)),
            "\\PC{0,12}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(
                    prop_oneof![
                        Just("template".to_string()),
                        Just("vcpus".to_string()),
                        Just("memory_mb".to_string()),
                        Just("cmd".to_string()),
                        Just("args".to_string()),
                        Just("envs".to_string()),
                        Just("metadata".to_string()),
                        Just("public_ports".to_string()),
                        "\\PC{0,8}",
                    ],
                    inner,
                    0..6,
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn is_400<T>(r: &Result<T, crate::error::ApiError>) -> bool {
        match r {
            Ok(_) => true,
            Err(e) => e.status == http::StatusCode::BAD_REQUEST && !e.message.is_empty(),
        }
    }

    proptest! {
        /// Any bytes as a body: parsed, or a 400 that says why; no panic.
        #[test]
        fn any_bytes_parse_or_get_a_400(body in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert!(is_400(&optional_json::<CreateSandboxReq>(&body)));
            prop_assert!(is_400(&required::<ExecReq>(&body)));
        }

        /// Any JSON document: parsed, or a 400 that says why.
        #[test]
        fn any_json_parses_or_gets_a_400(v in json_value()) {
            let body = serde_json::to_vec(&v).expect("serializes");
            prop_assert!(is_400(&optional_json::<CreateSandboxReq>(&body)));
            prop_assert!(is_400(&required::<ExecReq>(&body)));
        }
    }

    #[test]
    fn deep_nesting_is_a_400_not_a_stack_overflow() {
        for open in ["[", "{\"a\":"] {
            let body = open.repeat(100_000);
            assert!(matches!(
                optional_json::<CreateSandboxReq>(body.as_bytes()),
                Err(e) if e.status == http::StatusCode::BAD_REQUEST
            ));
        }
    }
}

#[cfg(test)]
mod document_tests {
    use utoipa::OpenApi;

    /// Every JSON body the API answers or takes has a schema in the
    /// document (what clients generate code from, and what schemathesis
    /// checks answers against); only bytes, streams and multipart
    /// uploads go without.
    #[test]
    fn every_body_has_a_schema() {
        let doc = serde_json::to_value(super::ApiDoc::openapi()).unwrap();
        let mut missing = Vec::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for (method, op) in ops.as_object().unwrap() {
                let name = format!("{} {path}", method.to_uppercase());
                for (status, resp) in op["responses"].as_object().unwrap() {
                    let success = status.starts_with('2') && status != "204";
                    match resp["content"].as_object() {
                        None if success => missing.push(format!("{name} {status}: no body")),
                        None => {}
                        Some(content) => {
                            for (ty, c) in content {
                                if ty == "application/json" && c["schema"].is_null() {
                                    missing.push(format!("{name} {status}: no schema"));
                                }
                            }
                        }
                    }
                }
                if let Some(content) = op["requestBody"]["content"].as_object() {
                    for (ty, c) in content {
                        if ty == "application/json" && c["schema"].is_null() {
                            missing.push(format!("{name} request: no schema"));
                        }
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "bodies without a schema:\n{}",
            missing.join("\n")
        );
    }

    /// Two bodies never share a schema name (one would silently replace
    /// the other in the document): each `$ref` names the body its route
    /// answers.
    #[test]
    fn native_and_e2b_bodies_have_their_own_schemas() {
        let doc = serde_json::to_value(super::ApiDoc::openapi()).unwrap();
        let schema = |path: &str, method: &str, status: &str| {
            doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
                ["$ref"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(
            schema("/v1/sandboxes", "post", "201"),
            "#/components/schemas/Sandbox"
        );
        assert_eq!(
            schema("/v2/sandboxes", "post", "201"),
            "#/components/schemas/E2bSandbox"
        );
        let native = &doc["components"]["schemas"]["Sandbox"]["properties"];
        assert!(native["traffic_token"].is_object(), "{native}");
    }
}

#[cfg(test)]
mod family_tests {
    #[test]
    fn paths_outside_v1_are_e2b_s() {
        for (path, e2b) in [
            ("/v1/sandboxes", false),
            ("/v1", false),
            ("/health", false),
            ("/openapi.json", false),
            ("/docs/index.html", false),
            ("/sandboxes/sb-1", true),
            ("/v2/sandboxes", true),
            ("/snapshots", true),
            ("/volumes/x", true),
            ("/v1x", true),
            ("/healthz", true),
        ] {
            assert_eq!(super::is_e2b_path(path), e2b, "{path}");
        }
    }
}
