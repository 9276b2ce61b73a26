//! Templates: what the caller's hosts can start, and their removal.

use axum::Json;
use axum::extract::{Path, State};
use wrenn_api_types::templates::{HostFailure, Template, TemplateDeleted};
use wrenn_protocol::hostagent::v1 as pb;

use crate::App;
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, ErrorBody};

#[utoipa::path(delete, path = "/v1/templates/{name}", tag = "templates", params(("name" = String, Path, description = "Template name")), responses((status = 200, description = "Removed; `deleted_on` lists the hosts", body = TemplateDeleted), (status = 403, description = "Not a platform admin", body = ErrorBody), (status = 404, description = "No online host has it", body = ErrorBody), (status = 409, description = "A sandbox uses it", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
/// DELETE /v1/templates/{name} (platform admins): removed from every
/// online host at once. 404 when no host had it; 409 when a sandbox uses it
/// somewhere (removed where it was free).
pub(super) async fn delete_template(
    State(app): State<App>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<TemplateDeleted>> {
    if !caller.is_admin {
        return Err(ApiError::forbidden("only platform admins delete templates"));
    }
    let hosts: Vec<_> = app
        .store
        .hosts()
        .await?
        .into_iter()
        .filter(|h| h.status == crate::host_status::HostStatus::Online)
        .collect();
    let calls = hosts.iter().map(|h| {
        let (name, pool) = (name.clone(), &app.hosts);
        async move {
            let c = pool
                .client(h)
                .await
                .map_err(|e| connectrpc::ConnectError::unavailable(e.to_string()))?;
            c.delete_template(pb::DeleteTemplateRequest {
                name,
                ..Default::default()
            })
            .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let (mut deleted, mut in_use, mut failed) = (vec![], vec![], vec![]);
    for (h, r) in hosts.iter().zip(results) {
        match r {
            Ok(_) => deleted.push(h.id.clone()),
            Err(e) if e.code == connectrpc::ErrorCode::NotFound => {}
            Err(e) if e.code == connectrpc::ErrorCode::FailedPrecondition => {
                in_use.push(HostFailure {
                    host_id: h.id.clone(),
                    message: e.message,
                })
            }
            Err(e) => failed.push(HostFailure {
                host_id: h.id.clone(),
                message: e.message,
            }),
        }
    }
    app.store
        .audit(&caller.team_id, &caller.actor, "template.delete", &name)
        .await?;
    for h in &deleted {
        app.store.drop_reported_template(h, &name).await?;
    }
    if !in_use.is_empty() {
        return Err(ApiError::conflict(
            "template_in_use",
            format!(
                "template '{name}' is in use: {}; removed from {} other hosts",
                serde_json::to_string(&in_use).unwrap_or_default(),
                deleted.len()
            ),
        ));
    }
    if in_use.is_empty() && failed.is_empty() {
        app.store.delete_shared_template(&name).await?;
    }
    if deleted.is_empty() && failed.is_empty() {
        return Err(ApiError::not_found(format!(
            "template '{name}' on any online host"
        )));
    }
    Ok(Json(TemplateDeleted {
        name,
        deleted_on: deleted,
        failed,
    }))
}

#[utoipa::path(get, path = "/v1/templates", tag = "templates", responses((status = 200, description = "Templates the caller's online hosts have (host ids for admins and the team's own hosts)", body = [Template])), security(("api_key" = []), ("bearer" = [])))]
/// GET /v1/templates: what the online hosts the caller can use (shared and
/// its team's) can start, each with the ids of the hosts that have it that
/// the caller may see (all for admins, else its team's own).
pub(super) async fn list_templates(
    State(app): State<App>,
    caller: Caller,
) -> ApiResult<Json<Vec<Template>>> {
    let mut names: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    // The hosts the caller's sandboxes can go to: shared ones and its team's.
    for h in app
        .store
        .hosts()
        .await?
        .into_iter()
        .filter(|h| h.status == crate::host_status::HostStatus::Online)
        .filter(|h| h.team_id.is_empty() || h.team_id == caller.team_id)
    {
        // What the host reported in its last heartbeat; a host that never
        // reports (a static one) is asked.
        let has = match h.templates.clone() {
            Some(t) => t,
            None => {
                let Ok(client) = app.hosts.client(&h).await else {
                    continue;
                };
                match client.get_host(pb::GetHostRequest::default()).await {
                    Ok(info) => info.into_owned().templates,
                    Err(_) => continue,
                }
            }
        };
        // Host ids are for admins and for the team's own hosts, as
        // `GET /v1/hosts` shows them.
        let shown = caller.is_admin || !h.team_id.is_empty();
        for n in has {
            let hosts = names.entry(n).or_default();
            if shown {
                hosts.push(h.id.clone());
            }
        }
    }
    Ok(Json(
        names
            .into_iter()
            .map(|(name, hosts)| Template {
                name,
                kind: "base".into(),
                hosts,
            })
            .collect(),
    ))
}
