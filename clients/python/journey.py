#!/usr/bin/env python3
"""A customer's whole journey through the sharemesh edge, over gRPC with the generated stubs.

Usage: python3 clients/python/journey.py <edge host:port>      (after `make clients`)

Mints a host and a customer token with the sharemesh binary (SHAREMESH_BIN, default
./target/debug/sharemesh; it signs with SHAREMESH_JWT_SECRET as set in the environment), then:
the host registers a car, the customer lists listings, places a reservation, sees it CONFIRMED,
finds it on GetMyPage, cancels it, waits for CANCELLED and for a message. Prints one line per
step; exits 0, or 1 naming the step that failed.
"""

import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "gen"))

try:
    import grpc
    from google.protobuf.timestamp_pb2 import Timestamp

    from sharemesh.catalog.v1 import catalog_pb2, catalog_pb2_grpc
    from sharemesh.common.v1 import common_pb2
    from sharemesh.message.v1 import message_pb2, message_pb2_grpc
    from sharemesh.payment.v1 import payment_pb2
    from sharemesh.reservation.v1 import reservation_pb2, reservation_pb2_grpc
    from sharemesh.view.v1 import view_pb2, view_pb2_grpc
except ImportError as e:  # the stubs are generated, not committed
    sys.exit(f"journey: cannot import the generated client ({e}); run `make clients` first")

CALL_TIMEOUT = 10.0  # seconds per RPC


class StepFailed(Exception):
    pass


def step(name, detail=""):
    print(f"ok    {name}" + (f": {detail}" if detail else ""), flush=True)


def mint(binary, sub, role):
    try:
        out = subprocess.run([binary, "token", "--sub", sub, "--role", role], capture_output=True, text=True, timeout=30)
    except OSError as e:
        raise StepFailed(f"cannot run {binary} ({e}); build it with `make build` or set SHAREMESH_BIN")
    if out.returncode != 0 or not out.stdout.strip():
        raise StepFailed(f"{binary} token --sub {sub} --role {role} failed: {out.stderr.strip()}")
    return out.stdout.strip()


def auth(token):
    return (("authorization", f"Bearer {token}"),)


def call(rpc, request, token):
    try:
        return rpc(request, metadata=auth(token), timeout=CALL_TIMEOUT)
    except grpc.RpcError as e:
        raise StepFailed(f"{e.code().name}: {e.details()}")


def poll(seconds, attempt, what):
    """Calls attempt() until it returns a truthy value or `seconds` pass."""
    deadline = time.monotonic() + seconds
    last = None
    while True:
        last = attempt()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise StepFailed(f"{what} within {seconds:g}s")
        time.sleep(0.25)


def status_name(value):
    return reservation_pb2.ReservationStatus.Name(value)


def journey(edge):
    binary = os.environ.get("SHAREMESH_BIN", "./target/debug/sharemesh")
    run = uuid.uuid4().hex[:8]
    current = "mint tokens"
    try:
        host_sub, customer_sub = f"journey-host-{run}", f"journey-customer-{run}"
        host = mint(binary, host_sub, "host")
        customer = mint(binary, customer_sub, "customer")
        step(current, f"host {host_sub}, customer {customer_sub}")

        channel = grpc.insecure_channel(edge)
        current = f"connect to {edge}"
        try:
            grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT)
        except grpc.FutureTimeoutError:
            raise StepFailed(f"the edge at {edge} does not answer")
        step(current)
        catalog = catalog_pb2_grpc.CatalogServiceStub(channel)
        reservations = reservation_pb2_grpc.ReservationServiceStub(channel)
        view = view_pb2_grpc.ViewServiceStub(channel)
        messages = message_pb2_grpc.MessageServiceStub(channel)

        current = "host registers a car"
        listing = call(
            catalog.RegisterListing,
            catalog_pb2.RegisterListingRequest(
                title=f"Journey car {run}",
                description="registered by clients/python/journey.py",
                price=common_pb2.Money(amount_minor=12000, currency="KRW"),
                car=catalog_pb2.CarDetails(model="Avante", car_type=catalog_pb2.CAR_TYPE_SEDAN, seats=5),
            ),
            host,
        ).listing
        step(current, listing.listing_id)

        current = "customer lists listings"
        listed = call(
            catalog.ListListings,
            catalog_pb2.ListListingsRequest(kind=common_pb2.LISTING_KIND_CAR, host_id=host_sub, page_size=50),
            customer,
        ).listings
        if listing.listing_id not in [l.listing_id for l in listed]:
            raise StepFailed(f"{listing.listing_id} is not among the {len(listed)} listed cars")
        step(current, f"{len(listed)} car(s) of {host_sub}, ours included")

        current = "customer places a reservation"
        start = (datetime.now(timezone.utc) + timedelta(days=30)).replace(minute=0, second=0, microsecond=0)
        start_ts, end_ts = Timestamp(), Timestamp()
        start_ts.FromDatetime(start)
        end_ts.FromDatetime(start + timedelta(hours=2))
        request_id = f"journey-{uuid.uuid4()}"
        reservation = call(
            reservations.PlaceReservation,
            reservation_pb2.PlaceReservationRequest(
                listing_id=listing.listing_id,
                window=common_pb2.TimeWindow(start_time=start_ts, end_time=end_ts),
                card=payment_pb2.PaymentCard(number="4242424242424242", exp_month=12, exp_year=2099, cvc="123"),
                request_id=request_id,
            ),
            customer,
        ).reservation
        rid = reservation.reservation_id
        step(current, f"{rid} ({status_name(reservation.status)}, {reservation.amount.amount_minor} {reservation.amount.currency})")

        current = "reservation is CONFIRMED"
        got = call(reservations.GetReservation, reservation_pb2.GetReservationRequest(reservation_id=rid), customer).reservation
        if got.status != reservation_pb2.RESERVATION_STATUS_CONFIRMED:
            raise StepFailed(f"status is {status_name(got.status)} ({got.status_reason or 'no reason'})")
        step(current, f"paid with {got.card.brand} {got.card.last4}")

        current = "GetMyPage shows it"

        def on_my_page():
            page = call(view.GetMyPage, view_pb2.GetMyPageRequest(page_size=200), customer).my_page
            return next((e for e in page.entries if e.reservation_id == rid), None)

        entry = poll(10, on_my_page, f"reservation {rid} did not appear on the customer's page")
        step(current, f"{entry.listing_title}: {status_name(entry.reservation_status)}")

        current = "customer cancels"
        cancelled = call(
            reservations.CancelReservation,
            reservation_pb2.CancelReservationRequest(reservation_id=rid, reason="journey: plans changed"),
            customer,
        ).reservation
        step(current, status_name(cancelled.status))

        current = "reservation becomes CANCELLED"

        def is_cancelled():
            r = call(reservations.GetReservation, reservation_pb2.GetReservationRequest(reservation_id=rid), customer).reservation
            return r if r.status == reservation_pb2.RESERVATION_STATUS_CANCELLED else None

        final = poll(15, is_cancelled, f"reservation {rid} did not reach RESERVATION_STATUS_CANCELLED")
        step(current, f"payment {payment_pb2.PaymentStatus.Name(final.payment_status)}")

        current = "customer has messages"

        def has_messages():
            return list(call(messages.ListMessages, message_pb2.ListMessagesRequest(page_size=50), customer).messages)

        inbox = poll(15, has_messages, "no message arrived for the customer")
        step(current, f"{len(inbox)} message(s), newest: {inbox[0].subject!r}")
        channel.close()
    except StepFailed as e:
        print(f"FAIL  {current}: {e}", file=sys.stderr, flush=True)
        return 1
    print("journey: every step passed", flush=True)
    return 0


def main(argv):
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    return journey(argv[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
