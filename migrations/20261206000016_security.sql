-- Sign-up attempts, kept for the sign-up window (src/auth/throttle.rs): every attempt is counted per address
-- (IPv6 per /64) and overall before any hashing, so sign-up costs no unbounded Argon2 work and its "taken" answer is
-- no fast account-enumeration oracle. In PostgreSQL so the limits hold across instances.
CREATE TABLE signup_attempts (
    id           bigserial   PRIMARY KEY,
    client_ip    inet,
    attempted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX signup_attempts_time ON signup_attempts (attempted_at);
CREATE INDEX signup_attempts_client_ip ON signup_attempts (client_ip, attempted_at);

-- Keys the server signs with, shared by every instance (src/page_errors.rs: the form errors a redirect carries in
-- the URL, so a crafted link cannot put its own text in Tally's forms).
CREATE TABLE server_keys (
    name text PRIMARY KEY,
    key  bytea NOT NULL
);

-- Tokens held by AI calls in flight (src/ai/generate.rs): the limit check counts them with the recorded usage, so
-- concurrent calls cannot overshoot a hard limit by one completion each. A row lives from before the call until its
-- real token count is recorded; `expires_at` frees the hold of a call whose process died.
CREATE TABLE ai_reservations (
    id         uuid PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    tokens     bigint NOT NULL CHECK (tokens > 0),
    expires_at timestamptz NOT NULL
);
CREATE INDEX ai_reservations_user_idx ON ai_reservations (user_id);
