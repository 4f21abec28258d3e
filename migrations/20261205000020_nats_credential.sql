-- Every NATS credential `ebb admin` minted (issue 7): the user's public nkey, whom it is for, and
-- whether it was revoked. The Ebb account JWT's revocations are built from this table, so a
-- revocation survives a server restart and can be pushed again.
CREATE TABLE nats_credential (
    public_key text PRIMARY KEY,
    -- The NATS user name: gateway, agent-site-a, integration-erp, ...
    name text NOT NULL,
    site_id uuid REFERENCES site (id) ON DELETE CASCADE,
    org_id uuid REFERENCES org (id) ON DELETE CASCADE,
    issued_at timestamptz NOT NULL,
    revoked_at timestamptz,
    CHECK (public_key ~ '^U[A-Z2-7]{55}$')
);
-- Query: revoke-creds, every credential of one user name.
CREATE INDEX nats_credential_name ON nats_credential (name);
-- Query: the account's revocations.
CREATE INDEX nats_credential_revoked ON nats_credential (revoked_at) WHERE revoked_at IS NOT NULL;
