-- Tenancy, keys and the fleet. Every customer row carries org_id and every query filters by it.

CREATE TABLE org (
    id uuid PRIMARY KEY,
    name text NOT NULL CHECK (length(btrim(name)) > 0),
    -- The longest an event may run unless an admin allows more (DESIGN §5.5).
    default_max_duration_s integer NOT NULL DEFAULT 14400 CHECK (default_max_duration_s > 0),
    settlement_window_minutes integer NOT NULL DEFAULT 15 CHECK (settlement_window_minutes IN (15, 60)),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_key (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES org (id),
    -- The public part of the key, used to find the row; the secret is stored only as a hash.
    prefix text NOT NULL UNIQUE,
    secret_hash bytea NOT NULL,
    role text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    name text NOT NULL,
    -- NULL: every site of the org; otherwise the only sites this key sees and touches.
    site_ids uuid[],
    -- Both cut-offs are half-open: the key is valid strictly before them. A future revoked_at is
    -- a rotation grace window.
    expires_at timestamptz,
    revoked_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_key_org ON api_key (org_id);

CREATE TABLE site (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES org (id),
    -- The site's token in NATS subjects (ebb.cmd.<code>): globally unique.
    code text NOT NULL UNIQUE CHECK (code ~ '^[a-z0-9_-]{1,64}$'),
    name text NOT NULL,
    -- Restore never adds more than this many kW per minute at this site (DESIGN §5.6).
    ramp_limit_kw_per_min double precision CHECK (ramp_limit_kw_per_min > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Query: sites of an org (scope resolution, listing).
CREATE INDEX site_org ON site (org_id);

CREATE TABLE rack (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES org (id),
    site_id uuid NOT NULL REFERENCES site (id),
    name text NOT NULL,
    UNIQUE (site_id, name)
);

CREATE TABLE device (
    id uuid PRIMARY KEY,
    org_id uuid NOT NULL REFERENCES org (id),
    site_id uuid NOT NULL REFERENCES site (id),
    rack_id uuid REFERENCES rack (id),
    address text NOT NULL,
    make text NOT NULL,
    model text NOT NULL,
    firmware text,
    nominal_power_w double precision CHECK (nominal_power_w >= 0),
    curtail_full boolean NOT NULL DEFAULT false,
    curtail_efficiency boolean NOT NULL DEFAULT false,
    power_target boolean NOT NULL DEFAULT false,
    maintenance boolean NOT NULL DEFAULT false,
    -- Lower is curtailed first among equally efficient miners.
    priority integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (site_id, address)
);
-- Query: candidates of an org by site (planner snapshot, inventory).
CREATE INDEX device_org_site ON device (org_id, site_id);

-- Latest telemetry per device, written one statement per telemetry batch.
CREATE TABLE device_state (
    device_id uuid PRIMARY KEY REFERENCES device (id) ON DELETE CASCADE,
    org_id uuid NOT NULL,
    reachable boolean NOT NULL,
    -- NULL when the miner did not answer: never reported as zero power.
    power_w double precision CHECK (power_w >= 0),
    hashrate_ths double precision CHECK (hashrate_ths >= 0),
    sampled_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
