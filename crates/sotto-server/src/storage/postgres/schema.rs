//! The PostgreSQL schema, as numbered migrations.

/// Numbered migrations; entry `i` moves the schema from version `i` to `i + 1`. Never edit an
/// entry that has shipped: append a new one.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE server_meta (key TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE TABLE accounts (
    username TEXT PRIMARY KEY,
    identity_key BYTEA NOT NULL,
    device_list_body BYTEA NOT NULL,
    device_list_signature BYTEA NOT NULL,
    revision BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE devices (
    username TEXT NOT NULL REFERENCES accounts(username),
    device TEXT NOT NULL,
    signature_key BYTEA NOT NULL,
    PRIMARY KEY (username, device)
);
CREATE TABLE used_challenges (
    challenge_hash BYTEA PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX used_challenges_expiry ON used_challenges(expires_at);
CREATE TABLE tokens (
    token_hash BYTEA PRIMARY KEY,
    username TEXT NOT NULL,
    device TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE TABLE key_packages (
    id BIGSERIAL PRIMARY KEY,
    username TEXT NOT NULL,
    device TEXT NOT NULL,
    data BYTEA NOT NULL
);
CREATE INDEX key_packages_device ON key_packages(username, device, id);
CREATE TABLE last_resort_key_packages (
    username TEXT NOT NULL,
    device TEXT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (username, device)
);
CREATE TABLE groups (
    group_id BYTEA PRIMARY KEY,
    epoch BIGINT NOT NULL,
    next_seq BIGINT NOT NULL
);
CREATE TABLE group_roster (
    group_id BYTEA NOT NULL,
    username TEXT NOT NULL,
    device TEXT NOT NULL,
    PRIMARY KEY (group_id, username, device)
);
CREATE TABLE messages (
    id BIGSERIAL PRIMARY KEY,
    group_id BYTEA NOT NULL,
    seq BIGINT NOT NULL,
    sender_user TEXT NOT NULL,
    sender_device TEXT NOT NULL,
    kind SMALLINT NOT NULL,
    data BYTEA NOT NULL,
    accepted_at BIGINT NOT NULL
);
CREATE INDEX messages_accepted ON messages(accepted_at);
CREATE TABLE queue (
    id BIGSERIAL PRIMARY KEY,
    username TEXT NOT NULL,
    device TEXT NOT NULL,
    message_id BIGINT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    size BIGINT NOT NULL
);
CREATE INDEX queue_device ON queue(username, device, id);
CREATE INDEX queue_message ON queue(message_id);
CREATE TABLE device_queues (
    username TEXT NOT NULL,
    device TEXT NOT NULL,
    count BIGINT NOT NULL DEFAULT 0,
    bytes BIGINT NOT NULL DEFAULT 0,
    dropped_total BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (username, device)
);
CREATE TABLE sends (
    username TEXT NOT NULL,
    device TEXT NOT NULL,
    client_id TEXT NOT NULL,
    message_id BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    epoch BIGINT NOT NULL,
    accepted_at BIGINT NOT NULL,
    PRIMARY KEY (username, device, client_id)
);
CREATE INDEX sends_accepted ON sends(accepted_at);
"#,
    // A device's entries by message id: an acknowledgement finds its entry directly, not
    // among the entries of every device that got the message.
    r#"
DROP INDEX IF EXISTS queue_device;
CREATE INDEX queue_device ON queue(username, device, message_id);
"#,
    // The key-transparency log (akd's records, opaque here) and the accounts waiting to be
    // published in it: every account that existed before the log.
    r#"
CREATE TABLE kt_nodes (id BYTEA PRIMARY KEY, data BYTEA NOT NULL);
CREATE TABLE kt_states (
    label BYTEA NOT NULL,
    epoch BIGINT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (label, epoch)
);
CREATE TABLE kt_pending (id BIGSERIAL PRIMARY KEY, username TEXT NOT NULL);
INSERT INTO kt_pending (username) SELECT username FROM accounts ORDER BY created_at, username;
"#,
    // Every account created is queued for the log by the database itself, in the insert's
    // transaction, whatever inserts it (the function finds the table in the schema it was
    // made in, whatever the session's search path).
    r#"
CREATE OR REPLACE FUNCTION accounts_to_kt() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO kt_pending (username) VALUES (NEW.username);
    RETURN NULL;
END;
$$;
DROP TRIGGER IF EXISTS accounts_to_kt ON accounts;
CREATE TRIGGER accounts_to_kt AFTER INSERT ON accounts
    FOR EACH ROW EXECUTE FUNCTION accounts_to_kt();
"#,
    // Device lists change (devices are linked and removed): each change is queued for the
    // log like a new account, and devices being linked wait at a rendezvous.
    r#"
DROP TRIGGER IF EXISTS device_lists_to_kt ON accounts;
CREATE TRIGGER device_lists_to_kt AFTER UPDATE OF device_list_body ON accounts
    FOR EACH ROW EXECUTE FUNCTION accounts_to_kt();
CREATE TABLE links (
    id BYTEA PRIMARY KEY,
    username TEXT NOT NULL,
    offer BYTEA NOT NULL,
    secret_hash BYTEA NOT NULL,
    expires_at BIGINT NOT NULL,
    sealed BYTEA,
    mac BYTEA,
    archive BYTEA
);
CREATE INDEX links_expiry ON links(expires_at);
"#,
    // Each epoch's root as published, with akd's proof that it extends the one before, and
    // the witnesses' cosignatures on its checkpoint.
    r#"
CREATE TABLE kt_epochs (epoch BIGINT PRIMARY KEY, root BYTEA NOT NULL, audit BYTEA);
CREATE TABLE kt_cosignatures (
    epoch BIGINT NOT NULL REFERENCES kt_epochs(epoch),
    witness TEXT NOT NULL,
    time BIGINT NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (epoch, witness)
);
"#,
    // When each device last signed in, for its owner's `devices list`.
    "ALTER TABLE devices ADD COLUMN last_seen BIGINT;",
];
