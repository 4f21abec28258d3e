//! Store errors, classified from PostgreSQL error codes, never from message text.

/// What went wrong talking to the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A unique constraint rejected the write; the name is for logs, never for clients.
    #[error("unique constraint {constraint} violated")]
    Unique { constraint: String },
    /// A compare-and-set found the row in another state: somebody else moved it first.
    #[error("lost a race: {0}")]
    RaceLost(String),
    #[error("serialization conflict persisted after {attempts} attempts")]
    RetriesExhausted { attempts: u32, source: sqlx::Error },
    #[error("database error")]
    Db(#[from] sqlx::Error),
    #[error("encoding a stored value")]
    Encode(String),
}

/// SQLSTATE codes the transaction helper retries.
pub const SERIALIZATION_FAILURE: &str = "40001";
pub const DEADLOCK_DETECTED: &str = "40P01";
pub const UNIQUE_VIOLATION: &str = "23505";

impl StoreError {
    /// Whether this error is a transient serialization failure or deadlock.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Db(e) if is_retryable(e))
    }

    /// The unique constraint this error violated, if that is what it is.
    pub fn unique_constraint(&self) -> Option<&str> {
        match self {
            StoreError::Unique { constraint } => Some(constraint),
            _ => None,
        }
    }

    /// Lifts unique violations out of a raw sqlx error so callers can match on them.
    pub fn classify(e: sqlx::Error) -> StoreError {
        if let sqlx::Error::Database(db) = &e
            && db.code().as_deref() == Some(UNIQUE_VIOLATION)
        {
            return StoreError::Unique {
                constraint: db.constraint().unwrap_or_default().to_owned(),
            };
        }
        if matches!(e, sqlx::Error::RowNotFound) {
            return StoreError::NotFound;
        }
        StoreError::Db(e)
    }
}

pub(crate) fn is_retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            matches!(
                db.code().as_deref(),
                Some(SERIALIZATION_FAILURE) | Some(DEADLOCK_DETECTED)
            )
        }
        _ => false,
    }
}
