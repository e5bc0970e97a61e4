//! The sharemesh contracts: Rust types, tonic clients and servers generated from `proto/`,
//! and the encoded descriptor set they came from.
//!
//! Use it as a client library on its own:
//!
//! ```no_run
//! use sharemesh_contracts::catalog::v1::{GetListingRequest, catalog_service_client::CatalogServiceClient};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut catalog = CatalogServiceClient::connect("http://127.0.0.1:50051").await?;
//! let mut request = tonic::Request::new(GetListingRequest { listing_id: "...".into() });
//! request.metadata_mut().insert("authorization", "Bearer <jwt>".parse()?);
//! let listing = catalog.get_listing(request).await?.into_inner().listing;
//! # let _ = listing; Ok(()) }
//! ```
//!
//! Read in this order: [`events`] (the integration events, one enum per stream, decoded in one
//! place) -> [`ext`] (helpers on the generated types: idempotent methods, timestamps, windows,
//! money, the stored forms of states) -> [`FILE_DESCRIPTOR_SET`] and the generated packages, one
//! per `proto/sharemesh/<context>/v1`.
#![forbid(unsafe_code)]

pub mod events;
pub mod ext;

/// Every `.proto` of the product and its imports, as an encoded `FileDescriptorSet`, with
/// source comments and the `google.api.http` options (server reflection, REST, OpenAPI).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sharemesh_descriptor.bin"));

/// Vendored Google API annotations (`google.api.http`). Their comments are Google's, written for
/// protobuf readers (grammar blocks, `[Field][]` references), not rustdoc.
#[allow(missing_docs, unreachable_pub, clippy::all, rustdoc::all)]
pub mod google {
    pub mod api {
        include!(concat!(env!("OUT_DIR"), "/google.api.rs"));
    }
}

/// Shared types: Money, TimeWindow, EventMetadata, ListingKind.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod common {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/sharemesh.common.v1.rs"));
    }
}

/// Listings (cars, talents) and their holds and bookings.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod catalog {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/sharemesh.catalog.v1.rs"));
    }
}

/// Reservations and the booking saga.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod reservation {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/sharemesh.reservation.v1.rs"));
    }
}

/// Payments.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod payment {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/sharemesh.payment.v1.rs"));
    }
}

/// Notifications to customers and hosts.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod message {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/sharemesh.message.v1.rs"));
    }
}

/// Read models: ListingView (carview) and MyPage.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod view {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/sharemesh.view.v1.rs"));
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn descriptor_set_keeps_http_annotations() {
        let set = prost_types::FileDescriptorSet::decode(super::FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
        let names: Vec<_> = set.file.iter().filter_map(|f| f.name.as_deref()).collect();
        assert!(names.contains(&"sharemesh/catalog/v1/catalog.proto"), "{names:?}");
        assert!(names.contains(&"google/api/http.proto"));
        // prost-types drops unknown extensions, so check the raw bytes for the option's path.
        let raw = String::from_utf8_lossy(super::FILE_DESCRIPTOR_SET);
        assert!(raw.contains("/v1/listings/{listing_id}"), "google.api.http options were lost");
    }

    #[test]
    fn events_have_full_names() {
        use prost::Name;
        assert_eq!(
            super::catalog::v1::ListingRegistered::full_name(),
            "sharemesh.catalog.v1.ListingRegistered"
        );
    }
}
