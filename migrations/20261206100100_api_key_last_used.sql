-- When a key was last seen working: written when a gateway looks the key up (once per key-cache
-- time to live per gateway), never once per request.
ALTER TABLE api_key ADD COLUMN last_used_at timestamptz;
