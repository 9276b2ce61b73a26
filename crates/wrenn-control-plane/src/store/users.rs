//! Users, teams, memberships and invitations.

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Store, now};

/// A person who can log in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct User {
    /// `usr-…`.
    pub id: String,
    /// Login.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Argon2id PHC string.
    #[serde(skip)]
    pub password_hash: String,
    /// May manage hosts.
    pub is_admin: bool,
    /// Unix seconds.
    pub created_at: i64,
}

/// An invitation into a team, waiting for the invitee's consent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Invitation {
    /// `inv-…`.
    pub id: String,
    /// The team.
    pub team_id: String,
    /// The team's name (read only).
    pub team_name: String,
    /// The invited user.
    pub user_id: String,
    /// Role on acceptance: owner, admin or member.
    pub role: String,
    /// Who invited (user or key id).
    pub invited_by: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; a later acceptance is refused.
    pub expires_at: i64,
}

fn invitation_from_row(r: &sqlx::any::AnyRow) -> Invitation {
    Invitation {
        id: r.get("id"),
        team_id: r.get("team_id"),
        team_name: r.get("team_name"),
        user_id: r.get("user_id"),
        role: r.get("role"),
        invited_by: r.get("invited_by"),
        created_at: r.get("created_at"),
        expires_at: r.get("expires_at"),
    }
}

/// A team: the unit that owns sandboxes and keys.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Team {
    /// `team-…`.
    pub id: String,
    /// Name.
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// A member of a team.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Member {
    /// The user.
    pub user_id: String,
    /// Their email.
    pub email: String,
    /// owner, admin or member.
    pub role: String,
}

fn user(r: &AnyRow) -> User {
    User {
        id: r.get("id"),
        email: r.get("email"),
        name: r.get("name"),
        password_hash: r.get("password_hash"),
        is_admin: r.get::<i64, _>("is_admin") != 0,
        created_at: r.get("created_at"),
    }
}

const USER_COLS: &str = "id, email, name, password_hash, is_admin, created_at";

impl Store {
    /// Creates a user.
    pub async fn create_user(&self, u: &User) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO users (id, email, name, password_hash, is_admin, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(&u.id)
            .bind(&u.email)
            .bind(&u.name)
            .bind(&u.password_hash)
            .bind(i64::from(u.is_admin))
            .bind(u.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records the team a user's calls act for by default (made at signup).
    pub async fn set_home_team(&self, user_id: &str, team_id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE users SET home_team_id = $1 WHERE id = $2")
            .bind(team_id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A user by email.
    pub async fn user_by_email(&self, email: &str) -> Result<Option<User>, sqlx::Error> {
        Ok(
            sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE email = $1"))
                .bind(email)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| user(&r)),
        )
    }

    /// A user by id.
    pub async fn user_by_id(&self, id: &str) -> Result<Option<User>, sqlx::Error> {
        Ok(
            sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| user(&r)),
        )
    }

    /// Creates a team.
    pub async fn create_team(&self, t: &Team) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO teams (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&t.id)
            .bind(&t.name)
            .bind(t.created_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A team by id.
    pub async fn team(&self, id: &str) -> Result<Option<Team>, sqlx::Error> {
        Ok(
            sqlx::query("SELECT id, name, created_at FROM teams WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| Team {
                    id: r.get("id"),
                    name: r.get("name"),
                    created_at: r.get("created_at"),
                }),
        )
    }

    /// Adds (or re-roles) a member.
    pub async fn set_member(
        &self,
        team_id: &str,
        user_id: &str,
        role: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
            .bind(team_id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO team_members (team_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(team_id)
        .bind(user_id)
        .bind(role)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a member; false if they were not one.
    pub async fn remove_member(&self, team_id: &str, user_id: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
            .bind(team_id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Invites `user_id` into a team (again: the invitation is renewed).
    pub async fn invite(&self, inv: &Invitation) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM team_invitations WHERE team_id = $1 AND user_id = $2")
            .bind(&inv.team_id)
            .bind(&inv.user_id)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO team_invitations (id, team_id, user_id, role, invited_by, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&inv.id)
        .bind(&inv.team_id)
        .bind(&inv.user_id)
        .bind(&inv.role)
        .bind(&inv.invited_by)
        .bind(inv.created_at)
        .bind(inv.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A user's unexpired invitations, newest first.
    pub async fn invitations_of(&self, user_id: &str) -> Result<Vec<Invitation>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT i.id AS id, i.team_id AS team_id, t.name AS team_name, i.user_id AS user_id, i.role AS role, i.invited_by AS invited_by, i.created_at AS created_at, i.expires_at AS expires_at FROM team_invitations i JOIN teams t ON t.id = i.team_id WHERE i.user_id = $1 AND i.expires_at > $2 ORDER BY i.created_at DESC, i.id",
        )
        .bind(user_id)
        .bind(now())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(invitation_from_row).collect())
    }

    /// Takes (deletes and returns) an unexpired invitation of `user_id`.
    pub async fn take_invitation(
        &self,
        id: &str,
        user_id: &str,
    ) -> Result<Option<Invitation>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT i.id AS id, i.team_id AS team_id, t.name AS team_name, i.user_id AS user_id, i.role AS role, i.invited_by AS invited_by, i.created_at AS created_at, i.expires_at AS expires_at FROM team_invitations i JOIN teams t ON t.id = i.team_id WHERE i.id = $1 AND i.user_id = $2",
        )
        .bind(id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        let taken = sqlx::query("DELETE FROM team_invitations WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(row
            .filter(|_| taken.rows_affected() > 0)
            .map(|r| invitation_from_row(&r))
            .filter(|i| i.expires_at > now()))
    }

    /// Withdraws a team's invitation (by a team admin).
    pub async fn withdraw_invitation(&self, team_id: &str, id: &str) -> Result<bool, sqlx::Error> {
        let r = sqlx::query("DELETE FROM team_invitations WHERE id = $1 AND team_id = $2")
            .bind(id)
            .bind(team_id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Members of a team.
    pub async fn members(&self, team_id: &str) -> Result<Vec<Member>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT m.user_id AS user_id, u.email AS email, m.role AS role FROM team_members m JOIN users u ON u.id = m.user_id WHERE m.team_id = $1 ORDER BY u.email",
        )
        .bind(team_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Member {
                user_id: r.get("user_id"),
                email: r.get("email"),
                role: r.get("role"),
            })
            .collect())
    }

    /// A user's role in a team, if a member.
    pub async fn role(&self, team_id: &str, user_id: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT role FROM team_members WHERE team_id = $1 AND user_id = $2")
            .bind(team_id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await
    }

    /// Teams a user belongs to, with their role: the user's home team (made
    /// at signup) first, as the one a call without `X-Team-Id` acts for, so
    /// joining another team never changes it; then in the order joined.
    pub async fn teams_of(&self, user_id: &str) -> Result<Vec<(Team, String)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT t.id AS id, t.name AS name, t.created_at AS created_at, m.role AS role FROM teams t JOIN team_members m ON m.team_id = t.id JOIN users u ON u.id = m.user_id WHERE m.user_id = $1 ORDER BY CASE WHEN t.id = u.home_team_id THEN 0 ELSE 1 END, m.created_at, t.created_at, t.id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    Team {
                        id: r.get("id"),
                        name: r.get("name"),
                        created_at: r.get("created_at"),
                    },
                    r.get("role"),
                )
            })
            .collect())
    }

    /// How many users exist.
    pub async fn user_count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await
    }
}
