//! The standard NATS `.creds` file: a user JWT and the user's nkey seed between the markers that
//! async-nats, the `nats` CLI and every other NATS client read.

use crate::jwt::{self, Claims, JwtError, User};

/// The text of a `.creds` file for `jwt` and `seed`.
pub fn format(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

/// The user JWT in a `.creds` file's text.
pub fn jwt_of(text: &str) -> Option<&str> {
    let start = text.find("-----BEGIN NATS USER JWT-----")? + "-----BEGIN NATS USER JWT-----".len();
    let end = start + text[start..].find("------END NATS USER JWT------")?;
    Some(text[start..end].trim())
}

/// The user's claims in a `.creds` file's text (its name, permissions and issuer).
pub fn user_of(text: &str) -> Result<Claims<User>, JwtError> {
    let jwt = jwt_of(text).ok_or_else(|| JwtError::Malformed("no user JWT in the creds".into()))?;
    jwt::decode(jwt)
}

/// The inbox prefix of the user a `.creds` file holds: `_INBOX_<name>`. Its permissions let it
/// subscribe there and nowhere else under an inbox, so no user reads another's replies.
pub fn inbox_prefix(text: &str) -> Result<String, JwtError> {
    Ok(crate::identity::inbox_prefix(&user_of(text)?.name))
}
