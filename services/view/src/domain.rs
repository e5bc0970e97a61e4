//! The view's errors, mapped to gRPC once in [`ViewError`]'s `From`.

/// Everything the view service answers besides success: the mesh's one rejection type.
pub type ViewError = sharemesh_mesh::status::Rejection;
