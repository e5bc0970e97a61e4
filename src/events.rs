//! The integration events, typed: one enum per stream, decoded in one place.
//!
//! A consumer decodes what arrived with `XEvent::decode(ce_type, payload)` and `match`es on the
//! variants; the match lists every event of the stream (ignored ones too), so a new event added
//! to a stream's `events.proto` and here does not compile until every consumer decides what to
//! do with it. Producers build the variant and hand its [`type_name`](ReservationEvent::type_name)
//! and bytes to the outbox.

use prost::{Message, Name};

use crate::catalog::v1::{Hold, Listing, ListingBooked, ListingDeleted, ListingRegistered, ListingReleased, ListingUpdated};
use crate::common::v1::EventMetadata;
use crate::message::v1::MessageSent;
use crate::payment::v1::{Payment, PaymentApproved, PaymentCancelled, PaymentDeclined};
use crate::reservation::v1::{
    Reservation, ReservationCancelRequested, ReservationCancelled, ReservationConfirmed, ReservationPaid, ReservationPlaced,
    ReservationRejected,
};

/// Whether `event_type` (a `ce-type`) is the protobuf full name of `M` — compared piecewise, so
/// telling an event's type costs no allocation (consumers ask for every delivery).
pub fn is<M: Name>(event_type: &str) -> bool {
    event_type
        .strip_prefix(M::PACKAGE)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|name| name == M::NAME)
}

/// Defines the enum of one stream: a variant per event message, `decode` by type name,
/// `type_names`, `type_name`, `encode_to_vec`, `metadata`, and `From` each message.
macro_rules! stream_events {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident($ty:ty)),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq)]
        pub enum $name {
            $($(#[$vdoc])* $variant($ty)),+
        }

        impl $name {
            /// Decodes an event of this stream from its type (`ce-type`, the protobuf full name)
            /// and payload; `Ok(None)` when the type is not one of this stream's events.
            pub fn decode(event_type: &str, payload: &[u8]) -> Result<Option<Self>, prost::DecodeError> {
                $(
                    if is::<$ty>(event_type) {
                        return <$ty as Message>::decode(payload).map(|e| Some(Self::$variant(e)));
                    }
                )+
                Ok(None)
            }

            /// The protobuf full names of every event of this stream.
            pub fn type_names() -> Vec<String> {
                vec![$(<$ty as Name>::full_name()),+]
            }

            /// The protobuf full name of the event: its `ce-type` and subject.
            pub fn type_name(&self) -> String {
                match self {
                    $(Self::$variant(_) => <$ty as Name>::full_name()),+
                }
            }

            /// The protobuf encoding of the event.
            pub fn encode_to_vec(&self) -> Vec<u8> {
                match self {
                    $(Self::$variant(e) => e.encode_to_vec()),+
                }
            }

            /// The event's metadata (id, aggregate, version, correlation, causation, time).
            pub fn metadata(&self) -> Option<&EventMetadata> {
                match self {
                    $(Self::$variant(e) => e.metadata.as_ref()),+
                }
            }
        }

        $(
            impl From<$ty> for $name {
                fn from(e: $ty) -> Self {
                    Self::$variant(e)
                }
            }
        )+
    };
}

stream_events! {
    /// The catalog stream (`SHAREMESH_CATALOG`).
    CatalogEvent {
        /// A host registered a listing.
        Registered(ListingRegistered),
        /// A listing changed.
        Updated(ListingUpdated),
        /// A listing was deleted.
        Deleted(ListingDeleted),
        /// A hold became a booking.
        Booked(ListingBooked),
        /// A hold or booking was given back.
        Released(ListingReleased),
    }
}

stream_events! {
    /// The reservation stream (`SHAREMESH_RESERVATION`): every event carries the reservation as
    /// it stands after the change.
    ReservationEvent {
        /// PENDING: the saga starts.
        Placed(ReservationPlaced),
        /// Charged and booked.
        Paid(ReservationPaid),
        /// Confirmed (at once for auto-confirmed kinds, else by the host).
        Confirmed(ReservationConfirmed),
        /// The saga ended without a booking.
        Rejected(ReservationRejected),
        /// The customer asked to cancel.
        CancelRequested(ReservationCancelRequested),
        /// Refunded and released.
        Cancelled(ReservationCancelled),
    }
}

stream_events! {
    /// The payment stream (`SHAREMESH_PAYMENT`): every event carries the payment.
    PaymentEvent {
        /// A charge went through.
        Approved(PaymentApproved),
        /// A charge was declined.
        Declined(PaymentDeclined),
        /// A charge was voided or refunded.
        Cancelled(PaymentCancelled),
    }
}

stream_events! {
    /// The message stream (`SHAREMESH_MESSAGE`).
    MessageEvent {
        /// A message was delivered.
        Sent(MessageSent),
    }
}

/// What happened to a reservation: the kind of a [`ReservationEvent`], without its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReservationChange {
    /// ReservationPlaced.
    Placed,
    /// ReservationPaid.
    Paid,
    /// ReservationConfirmed.
    Confirmed,
    /// ReservationRejected.
    Rejected,
    /// ReservationCancelRequested.
    CancelRequested,
    /// ReservationCancelled.
    Cancelled,
}

impl ReservationChange {
    /// Every change, in saga order.
    pub const ALL: [ReservationChange; 6] = [
        Self::Placed,
        Self::Paid,
        Self::Confirmed,
        Self::Rejected,
        Self::CancelRequested,
        Self::Cancelled,
    ];

    /// The change whose event has the protobuf full name `event_type`; `None` for another type.
    /// Without allocating: consumers ask for every delivery.
    pub fn of(event_type: &str) -> Option<Self> {
        let name = event_type
            .strip_prefix(ReservationPlaced::PACKAGE)
            .and_then(|rest| rest.strip_prefix('.'))?;
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The short protobuf name of the change's event (every one is in the reservation package).
    fn name(self) -> &'static str {
        match self {
            Self::Placed => ReservationPlaced::NAME,
            Self::Paid => ReservationPaid::NAME,
            Self::Confirmed => ReservationConfirmed::NAME,
            Self::Rejected => ReservationRejected::NAME,
            Self::CancelRequested => ReservationCancelRequested::NAME,
            Self::Cancelled => ReservationCancelled::NAME,
        }
    }

    /// The protobuf full name of the change's event (its `ce-type` and subject).
    pub fn type_name(self) -> String {
        format!("{}.{}", ReservationPlaced::PACKAGE, self.name())
    }
}

impl ReservationEvent {
    /// The event of `change`, carrying `reservation` as it stands after it.
    pub fn new(change: ReservationChange, metadata: EventMetadata, reservation: Reservation) -> Self {
        let (metadata, reservation) = (Some(metadata), Some(reservation));
        match change {
            ReservationChange::Placed => Self::Placed(ReservationPlaced { metadata, reservation }),
            ReservationChange::Paid => Self::Paid(ReservationPaid { metadata, reservation }),
            ReservationChange::Confirmed => Self::Confirmed(ReservationConfirmed { metadata, reservation }),
            ReservationChange::Rejected => Self::Rejected(ReservationRejected { metadata, reservation }),
            ReservationChange::CancelRequested => Self::CancelRequested(ReservationCancelRequested { metadata, reservation }),
            ReservationChange::Cancelled => Self::Cancelled(ReservationCancelled { metadata, reservation }),
        }
    }

    /// Which change this is.
    pub fn change(&self) -> ReservationChange {
        match self {
            Self::Placed(_) => ReservationChange::Placed,
            Self::Paid(_) => ReservationChange::Paid,
            Self::Confirmed(_) => ReservationChange::Confirmed,
            Self::Rejected(_) => ReservationChange::Rejected,
            Self::CancelRequested(_) => ReservationChange::CancelRequested,
            Self::Cancelled(_) => ReservationChange::Cancelled,
        }
    }

    /// The reservation after the change (`None` only in a malformed event).
    pub fn reservation(&self) -> Option<&Reservation> {
        match self {
            Self::Placed(e) => e.reservation.as_ref(),
            Self::Paid(e) => e.reservation.as_ref(),
            Self::Confirmed(e) => e.reservation.as_ref(),
            Self::Rejected(e) => e.reservation.as_ref(),
            Self::CancelRequested(e) => e.reservation.as_ref(),
            Self::Cancelled(e) => e.reservation.as_ref(),
        }
    }
}

impl PaymentEvent {
    /// The payment after the change (`None` only in a malformed event).
    pub fn payment(&self) -> Option<&Payment> {
        match self {
            Self::Approved(e) => e.payment.as_ref(),
            Self::Declined(e) => e.payment.as_ref(),
            Self::Cancelled(e) => e.payment.as_ref(),
        }
    }
}

impl CatalogEvent {
    /// The listing of a registration, change or deletion.
    pub fn listing(&self) -> Option<&Listing> {
        match self {
            Self::Registered(e) => e.listing.as_ref(),
            Self::Updated(e) => e.listing.as_ref(),
            Self::Deleted(e) => e.listing.as_ref(),
            Self::Booked(_) | Self::Released(_) => None,
        }
    }

    /// The hold of a booking or release.
    pub fn booking(&self) -> Option<&Hold> {
        match self {
            Self::Booked(e) => e.booking.as_ref(),
            Self::Released(e) => e.booking.as_ref(),
            Self::Registered(_) | Self::Updated(_) | Self::Deleted(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reservation_change_roundtrips_through_its_type_name() {
        for change in ReservationChange::ALL {
            let event = ReservationEvent::new(change, EventMetadata::default(), Reservation::default());
            let decoded = ReservationEvent::decode(&event.type_name(), &event.encode_to_vec())
                .expect("decodes")
                .expect("a reservation event");
            assert_eq!(decoded.change(), change);
            assert_eq!(change.type_name(), event.type_name());
            assert_eq!(decoded, event);
            assert_eq!(ReservationChange::of(&change.type_name()), Some(change));
        }
        assert_eq!(ReservationChange::of(&PaymentApproved::full_name()), None);
    }

    #[test]
    fn a_type_is_its_full_name_and_nothing_near_it() {
        assert!(is::<ReservationPlaced>("sharemesh.reservation.v1.ReservationPlaced"));
        for other in [
            "ReservationPlaced",
            "sharemesh.reservation.v1ReservationPlaced",
            "sharemesh.reservation.v1.ReservationPlacedX",
            "sharemesh.reservation.v2.ReservationPlaced",
            "",
        ] {
            assert!(!is::<ReservationPlaced>(other), "{other}");
        }
    }

    #[test]
    fn other_streams_types_are_not_this_streams() {
        let paid = PaymentEvent::from(PaymentApproved::default());
        assert_eq!(ReservationEvent::decode(&paid.type_name(), &paid.encode_to_vec()), Ok(None));
        assert!(ReservationEvent::decode(&ReservationPlaced::full_name(), &[0xff, 0xff]).is_err());
    }
}
