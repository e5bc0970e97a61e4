//! Book a car through the edge with nothing but the generated clients of `sharemesh-contracts`,
//! tonic and tokio: a host registers a car, a customer reserves it for two hours and pays, and the
//! reservation's status is printed (CONFIRMED: cars are confirmed as soon as they are paid).
//!
//! With the mesh running (`make run`, the edge on 127.0.0.1:50050):
//!
//! ```sh
//! export HOST_TOKEN=$(./target/debug/sharemesh token --sub host-1 --role host)
//! export CUSTOMER_TOKEN=$(./target/debug/sharemesh token --sub alice --role customer)
//! cargo run --example book_a_car -- http://127.0.0.1:50050
//! ```
#![allow(clippy::print_stdout)]

use std::time::{SystemTime, UNIX_EPOCH};

use sharemesh_contracts::catalog::v1::catalog_service_client::CatalogServiceClient;
use sharemesh_contracts::catalog::v1::{CarDetails, CarType, RegisterListingRequest, register_listing_request};
use sharemesh_contracts::common::v1::{Money, TimeWindow};
use sharemesh_contracts::payment::v1::PaymentCard;
use sharemesh_contracts::reservation::v1::reservation_service_client::ReservationServiceClient;
use sharemesh_contracts::reservation::v1::{PlaceReservationRequest, ReservationStatus};
use tonic::transport::Channel;

type Error = Box<dyn std::error::Error>;

/// A request carrying `authorization: Bearer <token>`.
fn authorized<T>(message: T, token: &str) -> Result<tonic::Request<T>, Error> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

fn token(var: &str, role: &str) -> Result<String, Error> {
    std::env::var(var)
        .map_err(|_| format!("{var} is not set: export {var}=$(./target/debug/sharemesh token --sub <user> --role {role})").into())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let edge = std::env::args().nth(1).unwrap_or_else(|| "http://127.0.0.1:50050".to_owned());
    let host_token = token("HOST_TOKEN", "host")?;
    let customer_token = token("CUSTOMER_TOKEN", "customer")?;

    // One HTTP/2 connection to the edge serves every client.
    let channel = Channel::from_shared(edge.clone())?
        .connect()
        .await
        .map_err(|e| format!("cannot reach the edge at {edge}: {e}"))?;
    let mut catalog = CatalogServiceClient::new(channel.clone());
    let mut reservations = ReservationServiceClient::new(channel);

    // The host registers a car: 12,000 KRW per started hour.
    let register = RegisterListingRequest {
        title: "Avante 2030".into(),
        description: "registered by examples/book_a_car.rs".into(),
        price: Some(Money::new(12_000, "KRW")),
        details: Some(register_listing_request::Details::Car(CarDetails {
            model: "Avante".into(),
            car_type: CarType::Sedan as i32,
            seats: 5,
        })),
    };
    let listing = catalog
        .register_listing(authorized(register, &host_token)?)
        .await?
        .into_inner()
        .listing
        .ok_or("no listing in the response")?;
    println!("registered {} ({})", listing.title, listing.listing_id);

    // The customer books it for two hours, 30 days from now on the hour, and pays by card.
    let now_ms = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    const HOUR_MS: i64 = 3_600_000;
    let start_ms = (now_ms / HOUR_MS + 30 * 24) * HOUR_MS;
    let place = PlaceReservationRequest {
        listing_id: listing.listing_id.clone(),
        window: Some(TimeWindow::from_ms(start_ms, start_ms + 2 * HOUR_MS)),
        card: Some(PaymentCard {
            number: "4242424242424242".into(),
            exp_month: 12,
            exp_year: 2099,
            cvc: "123".into(),
            holder_name: "Alice".into(),
        }),
        // The idempotency key: sending the same one again returns the same reservation.
        request_id: format!("book-a-car-{now_ms}-{}", std::process::id()),
    };
    let reservation = reservations
        .place_reservation(authorized(place, &customer_token)?)
        .await?
        .into_inner()
        .reservation
        .ok_or("no reservation in the response")?;
    let status =
        ReservationStatus::try_from(reservation.status).map_or_else(|_| reservation.status.to_string(), |s| s.as_str_name().to_owned());
    let amount = reservation.amount.unwrap_or_default();
    println!(
        "reservation {}: {status} ({} {})",
        reservation.reservation_id, amount.amount_minor, amount.currency
    );
    if !reservation.status_reason.is_empty() {
        println!("reason: {}", reservation.status_reason);
    }
    Ok(())
}
