-- Failed sign-in attempts, kept for the throttle window (src/auth/throttle.rs). In PostgreSQL rather than in
-- memory so the limits hold across every app instance behind a load balancer.
CREATE TABLE login_failures (
    id         bigserial   PRIMARY KEY,
    -- The normalised email tried (it need not belong to an account: guessing unknown emails is throttled too).
    email      text        NOT NULL,
    -- The client address, or NULL when the server could not tell it.
    client_ip  inet,
    failed_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX login_failures_email ON login_failures (email, failed_at);
CREATE INDEX login_failures_client_ip ON login_failures (client_ip, failed_at);
