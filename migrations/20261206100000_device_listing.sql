-- Query: GET /v1/devices pages through an org's devices by id (keyset), whatever its filters.
CREATE INDEX device_org_id ON device (org_id, id);
-- Query: the devices of an org in maintenance, which a Start checks its selection against (few
-- rows in any fleet).
CREATE INDEX device_maintenance ON device (org_id) WHERE maintenance;
