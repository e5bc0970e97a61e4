//! The view's errors, mapped to gRPC once in [`ViewError`]'s `From`.

/// Everything the view answers besides success.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// A request field is wrong.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// No such listing view.
    #[error("{0}")]
    NotFound(String),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] sea_orm::DbErr),
}

impl ViewError {
    /// A field violation.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

impl From<ViewError> for tonic::Status {
    fn from(e: ViewError) -> Self {
        match e {
            ViewError::Invalid { field, reason } => sharemesh_mesh::status::invalid_field(field, reason),
            ViewError::NotFound(m) => tonic::Status::not_found(m),
            ViewError::Storage(e) => sharemesh_mesh::status::storage_failure("view", &e),
        }
    }
}
