//! gRPC codes for the errors of the layers below, as the kubelet expects them.

use tonic::Status;

/// An image store error as a gRPC status (the mapping image/src/error.rs documents).
pub fn image_status(e: rsrun_image::Error) -> Status {
    use rsrun_image::Error as E;
    let msg = e.to_string();
    match e {
        E::NotFound(_) => Status::not_found(msg),
        E::Unauthorized(_) => Status::unauthenticated(msg),
        E::DeadlineExceeded(_) => Status::deadline_exceeded(msg),
        E::Cancelled(_) => Status::cancelled(msg),
        E::InvalidReference { .. } | E::InvalidConfig(_) => Status::invalid_argument(msg),
        E::LimitExceeded { .. } => Status::resource_exhausted(msg),
        E::Stalled { .. } => Status::unavailable(msg),
        _ => Status::unknown(msg),
    }
}
