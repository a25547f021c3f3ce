-- Access negotiations: requests and their Dataspace Protocol state, grants with metered usage, and the history of
-- every transition (who and why).
--
-- Portable SQL only: this schema must run unchanged on SQLite and PostgreSQL. Ids are application-generated TEXT
-- (UUID-based), counters are BIGINT, timestamps are RFC 3339 TEXT in UTC with fixed-width nanoseconds (so they
-- sort correctly as text), and JSON documents (requests, outcomes, terms) are TEXT.

CREATE TABLE access_requests (
    id           TEXT PRIMARY KEY,
    principal    TEXT NOT NULL,
    purpose      TEXT NOT NULL,
    state        TEXT NOT NULL,
    request_json TEXT NOT NULL,
    outcome_json TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);

CREATE INDEX access_requests_principal ON access_requests (principal);

-- One row per table a request names, so owners find the requests for their tables.
CREATE TABLE access_request_tables (
    request_id TEXT NOT NULL REFERENCES access_requests (id),
    table_name TEXT NOT NULL,
    PRIMARY KEY (request_id, table_name)
);

CREATE INDEX access_request_tables_table ON access_request_tables (table_name);

CREATE TABLE access_grants (
    id                     TEXT PRIMARY KEY,
    request_id             TEXT NOT NULL,
    principal              TEXT NOT NULL,
    purpose                TEXT NOT NULL,
    terms_json             TEXT NOT NULL,
    terms_hash             TEXT NOT NULL,
    contract_versions_json TEXT NOT NULL,
    approvers_json         TEXT NOT NULL,
    created_at             TEXT NOT NULL,
    expires_at             TEXT NOT NULL,
    revoked_at             TEXT,
    used_queries           BIGINT NOT NULL DEFAULT 0,
    used_rows              BIGINT NOT NULL DEFAULT 0
);

CREATE INDEX access_grants_principal ON access_grants (principal);
CREATE INDEX access_grants_request ON access_grants (request_id);

-- One row per table a grant covers, so owners find the consumers of their tables.
CREATE TABLE access_grant_tables (
    grant_id   TEXT NOT NULL REFERENCES access_grants (id),
    table_name TEXT NOT NULL,
    PRIMARY KEY (grant_id, table_name)
);

CREATE INDEX access_grant_tables_table ON access_grant_tables (table_name);

-- Append-only history of requests and grants; seq numbers the events of one subject from 1.
CREATE TABLE negotiation_events (
    subject_id  TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    occurred_at TEXT NOT NULL,
    kind        TEXT NOT NULL,
    state       TEXT,
    actor       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    PRIMARY KEY (subject_id, seq)
);
