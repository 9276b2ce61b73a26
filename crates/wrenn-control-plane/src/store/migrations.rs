//! Embedded schema migrations: (version, statements). Portable SQL that
//! PostgreSQL and SQLite both run. Append; never edit an applied one.

/// Every migration, in order.
pub const MIGRATIONS: &[(i64, &[&str])] = &[
    (
        1,
        &[
            "CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT NOT NULL, password_hash TEXT NOT NULL, is_admin BIGINT NOT NULL DEFAULT 0, created_at BIGINT NOT NULL)",
            "CREATE TABLE teams (id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at BIGINT NOT NULL)",
            "CREATE TABLE team_members (team_id TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE, user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE, role TEXT NOT NULL, created_at BIGINT NOT NULL, PRIMARY KEY (team_id, user_id))",
            "CREATE TABLE api_keys (id TEXT PRIMARY KEY, team_id TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE, created_by TEXT NOT NULL, name TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE, prefix TEXT NOT NULL, last4 TEXT NOT NULL, created_at BIGINT NOT NULL, last_used_at BIGINT)",
            "CREATE TABLE hosts (id TEXT PRIMARY KEY, name TEXT NOT NULL, address TEXT NOT NULL, token TEXT NOT NULL, status TEXT NOT NULL, created_at BIGINT NOT NULL, last_seen_at BIGINT NOT NULL)",
            "CREATE TABLE sandboxes (id TEXT PRIMARY KEY, team_id TEXT NOT NULL REFERENCES teams(id), host_id TEXT NOT NULL, template TEXT NOT NULL, state TEXT NOT NULL, vcpus BIGINT NOT NULL, memory_mb BIGINT NOT NULL, disk_size_mb BIGINT NOT NULL, timeout_sec BIGINT NOT NULL, allow_internet_access BIGINT NOT NULL, metadata TEXT NOT NULL, envd_address TEXT NOT NULL, envd_token TEXT NOT NULL, error TEXT NOT NULL, created_at BIGINT NOT NULL, started_at BIGINT NOT NULL, last_active_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
            "CREATE INDEX sandboxes_team ON sandboxes (team_id, state)",
            "CREATE INDEX sandboxes_host ON sandboxes (host_id, state)",
            "CREATE TABLE audit_logs (id TEXT PRIMARY KEY, team_id TEXT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, created_at BIGINT NOT NULL)",
            "CREATE INDEX audit_logs_team ON audit_logs (team_id, created_at)",
        ],
    ),
    (
        2,
        &[
            // The sandbox proxy: a per-sandbox traffic token and public ports;
            // E2B's autoPause (pause, not destroy, at the timeout).
            "ALTER TABLE sandboxes ADD COLUMN traffic_token TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE sandboxes ADD COLUMN public_ports TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE sandboxes ADD COLUMN auto_pause BIGINT NOT NULL DEFAULT 0",
        ],
    ),
    (
        3,
        &[
            // Registered hosts: owner team, tags, capacity, registration.
            "ALTER TABLE hosts ADD COLUMN kind TEXT NOT NULL DEFAULT 'static'",
            "ALTER TABLE hosts ADD COLUMN team_id TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE hosts ADD COLUMN tags TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE hosts ADD COLUMN arch TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE hosts ADD COLUMN cpu_count BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE hosts ADD COLUMN memory_mb BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE hosts ADD COLUMN disk_mb BIGINT NOT NULL DEFAULT 0",
            "ALTER TABLE hosts ADD COLUMN reg_token_hash TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE hosts ADD COLUMN reg_expires_at BIGINT NOT NULL DEFAULT 0",
            // Refresh tokens of hosts (only hashes); revoked_at 0 = valid.
            "CREATE TABLE host_tokens (id TEXT PRIMARY KEY, host_id TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE, expires_at BIGINT NOT NULL, revoked_at BIGINT NOT NULL DEFAULT 0, created_at BIGINT NOT NULL)",
            "CREATE INDEX host_tokens_host ON host_tokens (host_id)",
        ],
    ),
    (
        4,
        &[
            // A key made by a platform admin carries the admin's platform
            // rights (hosts, templates), so `wrenn up`'s key can manage them.
            "ALTER TABLE api_keys ADD COLUMN platform_admin BIGINT NOT NULL DEFAULT 0",
        ],
    ),
    (
        5,
        &[
            // Membership needs the invitee's consent: a team admin invites,
            // the invited user accepts (or declines).
            "CREATE TABLE team_invitations (id TEXT PRIMARY KEY, team_id TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE, user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE, role TEXT NOT NULL, invited_by TEXT NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL)",
            "CREATE UNIQUE INDEX team_invitations_once ON team_invitations (team_id, user_id)",
            "CREATE INDEX team_invitations_user ON team_invitations (user_id)",
            // The team made at signup: what a user's calls act for unless
            // they name another (`X-Team-Id`), whatever teams they join.
            "ALTER TABLE users ADD COLUMN home_team_id TEXT NOT NULL DEFAULT ''",
        ],
    ),
    (
        6,
        &[
            // What a host runs: the runtime it reports, and the templates
            // it has (a JSON array; '' = never reported, as static hosts).
            "ALTER TABLE hosts ADD COLUMN runtime TEXT NOT NULL DEFAULT ''",
            "ALTER TABLE hosts ADD COLUMN templates TEXT NOT NULL DEFAULT ''",
            // The catalog of templates, ready for builds and snapshots:
            // shared ones (team_id '') and, later, a team's own. A name a
            // host reports is entered here as a shared `base` template.
            "CREATE TABLE templates (id TEXT PRIMARY KEY, team_id TEXT NOT NULL DEFAULT '', name TEXT NOT NULL, kind TEXT NOT NULL, runtime TEXT NOT NULL DEFAULT '', status TEXT NOT NULL, created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
            "CREATE UNIQUE INDEX templates_name ON templates (team_id, name)",
        ],
    ),
    (
        7,
        &[
            // Whether traffic through the proxy resumes the sandbox when it
            // is paused (E2B's `autoResume`). Sandboxes made before: yes,
            // as the proxy did for every sandbox.
            "ALTER TABLE sandboxes ADD COLUMN auto_resume BIGINT NOT NULL DEFAULT 1",
        ],
    ),
    (
        8,
        &[
            // Its network settings (`sandboxes::network::Network` as JSON:
            // egress rules, public traffic, the Host its apps see); '' is
            // none of them, what sandboxes made before had.
            "ALTER TABLE sandboxes ADD COLUMN network TEXT NOT NULL DEFAULT ''",
        ],
    ),
];
