//! Signup, login, API keys, teams and the audit log.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use wrenn_api_types::identity::{
    AddMember, AuditEntry, AuditLog, CreateKey, CreateTeam, Invitation as InvitationView,
    Invitations, Invited, Joined, Key, Keys, Login, Members, Membership, NewKey, Session, SignedUp,
    Signup, Team as TeamView, Teams, User as UserView,
};

use super::{ApiJson, OptionalJson, rfc3339};
use crate::App;
use crate::auth::{Caller, ClientIp, KeyFormat, new_api_key};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::ids;
use crate::store::{ApiKey, Team, User, now};

fn check_email(email: &str) -> ApiResult<()> {
    if email.len() < 3 || !email.contains('@') || email.len() > 254 {
        return Err(ApiError::bad_request("email: not an email address"));
    }
    Ok(())
}

/// POST /v1/auth/signup: a user, their own team (as owner), and a token.
#[utoipa::path(post, path = "/v1/auth/signup", tag = "auth", request_body = Signup, responses((status = 201, description = "User, team and token", body = SignedUp), (status = 409, description = "Email taken", body = ErrorBody), (status = 400, description = "Bad input", body = ErrorBody)))]
pub(super) async fn signup(
    State(app): State<App>,
    ApiJson(r): ApiJson<Signup>,
) -> ApiResult<(StatusCode, Json<SignedUp>)> {
    check_email(&r.email)?;
    if r.password.len() < 8 {
        return Err(ApiError::bad_request("password: use at least 8 characters"));
    }
    if app.store.user_by_email(&r.email).await?.is_some() {
        return Err(ApiError::conflict(
            "already_exists",
            format!("a user with email {} exists; log in instead", r.email),
        ));
    }
    // The first user of a fresh server is its platform admin.
    let first = app.store.user_count().await? == 0;
    let (user, team) = create_user_with_team(
        &app,
        &r.email,
        &r.password,
        r.name.as_deref(),
        r.team_name.as_deref(),
        first,
    )
    .await?;
    let token = app.jwt.issue(&user.id);
    Ok((
        StatusCode::CREATED,
        Json(SignedUp {
            user: user_view(&user),
            team: TeamView {
                id: team.id,
                name: team.name,
                created_at: team.created_at,
            },
            token,
        }),
    ))
}

/// A user as the API shows it.
fn user_view(u: &User) -> UserView {
    UserView {
        id: u.id.clone(),
        email: u.email.clone(),
        name: u.name.clone(),
        is_admin: u.is_admin,
        created_at: u.created_at,
    }
}

/// A team and a role in it.
fn membership(t: Team, role: String) -> Membership {
    Membership {
        id: t.id,
        name: t.name,
        role,
    }
}

/// Creates a user and a team they own.
pub async fn create_user_with_team(
    app: &App,
    email: &str,
    password: &str,
    name: Option<&str>,
    team_name: Option<&str>,
    is_admin: bool,
) -> ApiResult<(User, Team)> {
    let user = User {
        id: ids::new("usr"),
        email: email.to_string(),
        name: name
            .unwrap_or(email.split('@').next().unwrap_or(email))
            .to_string(),
        password_hash: app.passwords.hash(password.to_string()).await?,
        is_admin,
        created_at: now(),
    };
    app.store.create_user(&user).await?;
    let team = Team {
        id: ids::new("team"),
        name: team_name
            .unwrap_or(&format!("{}'s team", user.name))
            .to_string(),
        created_at: now(),
    };
    app.store.create_team(&team).await?;
    app.store.set_member(&team.id, &user.id, "owner").await?;
    app.store.set_home_team(&user.id, &team.id).await?;
    app.store
        .audit(&team.id, &user.id, "team.create", &team.id)
        .await?;
    Ok((user, team))
}

/// POST /v1/auth/login.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = Login, responses((status = 200, description = "Token, user and teams", body = Session), (status = 401, description = "Wrong email or password", body = ErrorBody)))]
pub(super) async fn login(
    State(app): State<App>,
    ClientIp(ip): ClientIp,
    ApiJson(r): ApiJson<Login>,
) -> ApiResult<Json<Session>> {
    if let Err(wait) = app.login_guard.check(&r.email, ip) {
        // Answered late (a sleeping task, no CPU): a client that guesses in
        // a loop slows to a few requests a second instead of spinning the
        // server on refusals.
        tokio::time::sleep(crate::auth::LOGIN_REFUSAL_DELAY).await;
        return Err(ApiError::too_many(
            format!("too many failed logins for this account or address; try again in {wait} s"),
            wait,
        ));
    }
    let user = app.store.user_by_email(&r.email).await?;
    // Same answer, and the same cost, for unknown email and wrong password.
    let ok = app
        .passwords
        .verify(
            r.password.clone(),
            user.as_ref().map(|u| u.password_hash.clone()),
        )
        .await?;
    let Some(user) = user.filter(|_| ok) else {
        app.login_guard.failed(&r.email, ip);
        return Err(ApiError::unauthorized("wrong email or password"));
    };
    app.login_guard.succeeded(&r.email);
    let teams = app
        .store
        .teams_of(&user.id)
        .await?
        .into_iter()
        .map(|(t, role)| membership(t, role))
        .collect();
    Ok(Json(Session {
        token: app.jwt.issue(&user.id),
        user: user_view(&user),
        teams,
    }))
}

/// A key as the API shows it (never its secret).
fn key_view(k: &ApiKey) -> Key {
    Key {
        id: k.id.clone(),
        name: k.name.clone(),
        prefix: k.prefix.clone(),
        last4: k.last4.clone(),
        team_id: k.team_id.clone(),
        created_by: k.created_by.clone(),
        created_at: rfc3339(k.created_at),
        last_used_at: k.last_used_at.and_then(rfc3339),
    }
}

/// Creates an API key for the caller's team; the secret is returned once.
pub async fn issue_key(
    app: &App,
    team_id: &str,
    actor: &str,
    name: &str,
    format: KeyFormat,
    platform_admin: bool,
) -> ApiResult<(String, ApiKey)> {
    let (secret, hash, prefix, last4) = new_api_key(format);
    let k = ApiKey {
        id: ids::new("key"),
        team_id: team_id.to_string(),
        created_by: actor.to_string(),
        name: name.to_string(),
        prefix,
        last4,
        created_at: now(),
        last_used_at: None,
        platform_admin,
    };
    app.store.create_api_key(&k, &hash).await?;
    app.store
        .audit(team_id, actor, "api_key.create", &k.id)
        .await?;
    Ok((secret, k))
}

/// POST /v1/api-keys.
#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys", request_body(content = CreateKey, description = "Optional"), responses((status = 201, description = "The key, shown once in `key`", body = NewKey), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn create_key(
    State(app): State<App>,
    caller: Caller,
    OptionalJson(body): OptionalJson<CreateKey>,
) -> ApiResult<(StatusCode, Json<NewKey>)> {
    caller.require_team_admin()?;
    let name = body.name.unwrap_or_else(|| "api key".into());
    let format = match body.format.as_deref() {
        None | Some("wrenn") => KeyFormat::Wrenn,
        Some("e2b") => KeyFormat::E2b,
        Some(f) => {
            return Err(ApiError::bad_request(format!(
                "format: '{f}' is not a key format; use 'wrenn' or 'e2b'"
            )));
        }
    };
    let (secret, k) = issue_key(
        &app,
        &caller.team_id,
        &caller.actor,
        &name,
        format,
        caller.is_admin,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(NewKey {
            info: key_view(&k),
            key: secret,
        }),
    ))
}

/// GET /v1/api-keys.
#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys", responses((status = 200, description = "The team's keys (never their secrets)", body = Keys), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn list_keys(State(app): State<App>, caller: Caller) -> ApiResult<Json<Keys>> {
    let api_keys = app
        .store
        .api_keys(&caller.team_id)
        .await?
        .iter()
        .map(key_view)
        .collect();
    Ok(Json(Keys { api_keys }))
}

/// DELETE /v1/api-keys/{id}.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api-keys", params(("id" = String, Path, description = "Key id")), responses((status = 204, description = "Deleted"), (status = 404, description = "No such key in the team", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn delete_key(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    caller.require_team_admin()?;
    if !app.store.delete_api_key(&caller.team_id, &id).await? {
        return Err(ApiError::not_found(format!("API key '{id}'")));
    }
    app.keys.forget(&id);
    app.store
        .audit(&caller.team_id, &caller.actor, "api_key.delete", &id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// GET /v1/teams: the caller's teams (for a key: its team).
#[utoipa::path(get, path = "/v1/teams", tag = "teams", responses((status = 200, description = "The caller's teams", body = Teams)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn list_teams(State(app): State<App>, caller: Caller) -> ApiResult<Json<Teams>> {
    let teams = match &caller.user_id {
        Some(u) => app
            .store
            .teams_of(u)
            .await?
            .into_iter()
            .map(|(t, role)| membership(t, role))
            .collect(),
        None => app
            .store
            .team(&caller.team_id)
            .await?
            .into_iter()
            .map(|t| membership(t, caller.role.clone()))
            .collect(),
    };
    Ok(Json(Teams { teams }))
}

/// POST /v1/teams: a new team owned by the calling user.
#[utoipa::path(post, path = "/v1/teams", tag = "teams", request_body = CreateTeam, responses((status = 201, description = "The team, owned by the caller", body = Membership), (status = 400, description = "Bad input", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody)), security(("bearer" = [])))]
pub(super) async fn create_team(
    State(app): State<App>,
    caller: Caller,
    ApiJson(r): ApiJson<CreateTeam>,
) -> ApiResult<(StatusCode, Json<Membership>)> {
    let Some(user) = caller.user_id else {
        return Err(ApiError::forbidden(
            "API keys cannot create teams; log in as a user",
        ));
    };
    if r.name.trim().is_empty() || r.name.len() > 100 {
        return Err(ApiError::bad_request("name: 1 to 100 characters"));
    }
    let team = Team {
        id: ids::new("team"),
        name: r.name,
        created_at: now(),
    };
    app.store.create_team(&team).await?;
    app.store.set_member(&team.id, &user, "owner").await?;
    app.store
        .audit(&team.id, &user, "team.create", &team.id)
        .await?;
    Ok((StatusCode::CREATED, Json(membership(team, "owner".into()))))
}

fn own_team(caller: &Caller, id: &str) -> ApiResult<()> {
    if caller.team_id != id {
        return Err(ApiError::not_found(format!("team '{id}'")));
    }
    Ok(())
}

/// GET /v1/teams/{id}/members.
#[utoipa::path(get, path = "/v1/teams/{id}/members", tag = "teams", params(("id" = String, Path)), responses((status = 200, description = "Members", body = Members), (status = 404, description = "Not the caller's team", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn list_members(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Members>> {
    own_team(&caller, &id)?;
    let members = app
        .store
        .members(&id)
        .await?
        .into_iter()
        .map(|m| wrenn_api_types::identity::Member {
            user_id: m.user_id,
            email: m.email,
            role: m.role,
        })
        .collect();
    Ok(Json(Members { members }))
}

/// How long an invitation waits for its answer.
pub const INVITATION_TTL_SECS: i64 = 7 * 86400;

/// POST /v1/teams/{id}/members: invites an existing user by email (202; the
/// user becomes a member only by accepting), or changes a member's role.
#[utoipa::path(post, path = "/v1/teams/{id}/members", tag = "teams", params(("id" = String, Path)), request_body = AddMember, responses((status = 202, description = "Invited; the user accepts with POST /v1/invitations/{id}/accept", body = Invited), (status = 204, description = "Already a member: role changed"), (status = 404, description = "No such team or user", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn add_member(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<AddMember>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    own_team(&caller, &id)?;
    caller.require_team_admin()?;
    let role = r.role.unwrap_or_else(|| "member".into());
    if !["owner", "admin", "member"].contains(&role.as_str()) {
        return Err(ApiError::bad_request("role: one of owner, admin, member"));
    }
    if role == "owner" && caller.role != "owner" {
        return Err(ApiError::forbidden("only an owner can make owners"));
    }
    let user = app
        .store
        .user_by_email(&r.email)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("user '{}'", r.email)))?;
    if app.store.role(&id, &user.id).await?.is_some() {
        app.store.set_member(&id, &user.id, &role).await?;
        app.store
            .audit(&id, &caller.actor, "team.member.role", &user.id)
            .await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let inv = crate::store::Invitation {
        id: ids::new("inv"),
        team_id: id.clone(),
        team_name: String::new(),
        user_id: user.id.clone(),
        role,
        invited_by: caller.actor.clone(),
        created_at: now(),
        expires_at: now() + INVITATION_TTL_SECS,
    };
    app.store.invite(&inv).await?;
    app.store
        .audit(&id, &caller.actor, "team.member.invite", &user.id)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Invited {
            invitation: invitation_view(&inv),
        }),
    )
        .into_response())
}

/// An invitation as the API shows it.
fn invitation_view(i: &crate::store::Invitation) -> InvitationView {
    InvitationView {
        id: i.id.clone(),
        team_id: i.team_id.clone(),
        team_name: i.team_name.clone(),
        user_id: i.user_id.clone(),
        role: i.role.clone(),
        invited_by: i.invited_by.clone(),
        created_at: rfc3339(i.created_at),
        expires_at: rfc3339(i.expires_at),
    }
}

/// The user behind a call; invitations are a person's, not an API key's.
fn user_of(caller: &Caller) -> ApiResult<&str> {
    caller.user_id.as_deref().ok_or_else(|| {
        ApiError::forbidden(
            "invitations belong to a user: log in (POST /v1/auth/login) and send Authorization: Bearer <token>",
        )
    })
}

/// GET /v1/invitations: the caller's pending invitations.
#[utoipa::path(get, path = "/v1/invitations", tag = "teams", responses((status = 200, description = "Pending invitations of the logged-in user", body = Invitations), (status = 403, description = "Called with an API key", body = ErrorBody)), security(("bearer" = [])))]
pub(super) async fn list_invitations(
    State(app): State<App>,
    caller: Caller,
) -> ApiResult<Json<Invitations>> {
    let user = user_of(&caller)?;
    let invitations = app
        .store
        .invitations_of(user)
        .await?
        .iter()
        .map(invitation_view)
        .collect();
    Ok(Json(Invitations { invitations }))
}

/// POST /v1/invitations/{id}/accept: joins the team. Calls still act for
/// the caller's first team unless they send `X-Team-Id`.
#[utoipa::path(post, path = "/v1/invitations/{id}/accept", tag = "teams", params(("id" = String, Path)), responses((status = 200, description = "Joined", body = Joined), (status = 404, description = "No such pending invitation for this user", body = ErrorBody)), security(("bearer" = [])))]
pub(super) async fn accept_invitation(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Joined>> {
    let user = user_of(&caller)?.to_string();
    let inv = app
        .store
        .take_invitation(&id, &user)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("pending invitation '{id}'")))?;
    app.store.set_member(&inv.team_id, &user, &inv.role).await?;
    app.store
        .audit(&inv.team_id, &user, "team.member.join", &user)
        .await?;
    Ok(Json(Joined {
        team: Membership {
            id: inv.team_id,
            name: inv.team_name,
            role: inv.role,
        },
    }))
}

/// DELETE /v1/invitations/{id}: the invitee declines, or an admin of the
/// inviting team (acting for it) withdraws it.
#[utoipa::path(delete, path = "/v1/invitations/{id}", tag = "teams", params(("id" = String, Path)), responses((status = 204, description = "Declined or withdrawn"), (status = 404, description = "No such invitation", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn delete_invitation(
    State(app): State<App>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if let Some(user) = caller.user_id.as_deref() {
        if app.store.take_invitation(&id, user).await?.is_some() {
            return Ok(StatusCode::NO_CONTENT);
        }
    }
    if caller.require_team_admin().is_ok()
        && app.store.withdraw_invitation(&caller.team_id, &id).await?
    {
        app.store
            .audit(
                &caller.team_id,
                &caller.actor,
                "team.invitation.withdraw",
                &id,
            )
            .await?;
        return Ok(StatusCode::NO_CONTENT);
    }
    Err(ApiError::not_found(format!("invitation '{id}'")))
}

/// DELETE /v1/teams/{id}/members/{user_id}.
#[utoipa::path(delete, path = "/v1/teams/{id}/members/{user_id}", tag = "teams", params(("id" = String, Path), ("user_id" = String, Path)), responses((status = 204, description = "Removed"), (status = 404, description = "Not a member", body = ErrorBody)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn remove_member(
    State(app): State<App>,
    caller: Caller,
    Path((id, user_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    own_team(&caller, &id)?;
    caller.require_team_admin()?;
    if app.store.role(&id, &user_id).await?.as_deref() == Some("owner") && caller.role != "owner" {
        return Err(ApiError::forbidden("only an owner can remove an owner"));
    }
    if !app.store.remove_member(&id, &user_id).await? {
        return Err(ApiError::not_found(format!("member '{user_id}'")));
    }
    app.store
        .audit(&id, &caller.actor, "team.member.remove", &user_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// GET /v1/audit-logs.
#[utoipa::path(get, path = "/v1/audit-logs", tag = "audit", responses((status = 200, description = "The team's latest audit entries", body = AuditLog)), security(("api_key" = []), ("bearer" = [])))]
pub(super) async fn audit_logs(
    State(app): State<App>,
    caller: Caller,
) -> ApiResult<Json<AuditLog>> {
    let audit_logs = app
        .store
        .audit_log(&caller.team_id, 200)
        .await?
        .into_iter()
        .map(|e| AuditEntry {
            id: e.id,
            actor: e.actor,
            action: e.action,
            target: e.target,
            created_at: rfc3339(e.created_at),
        })
        .collect();
    Ok(Json(AuditLog { audit_logs }))
}
