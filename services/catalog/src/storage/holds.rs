//! The `holds` table: a reservation's claim on a window of a listing (HELD, then BOOKED, or
//! RELEASED / EXPIRED).

use sea_orm::sea_query::{Expr, ExprTrait, LockType, Query};
use sea_orm::{ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, FromQueryResult, IntoActiveModel, Iterable, QueryFilter, Statement};
use sharemesh_contracts::catalog::v1::{Hold, HoldStatus};
use sharemesh_contracts::common::v1::TimeWindow;
use sharemesh_contracts::ext::timestamp_from_ms;
use sharemesh_mesh::storage::{ReadModels, insert_unless_taken};

use super::listings::ListingRow;
use crate::domain::CatalogError;

/// A row of `holds`.
pub mod entity {
    use sea_orm::entity::prelude::*;

    /// A hold or booking of a window.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "holds")]
    pub struct Model {
        /// Hold id (UUID).
        #[sea_orm(primary_key, auto_increment = false)]
        pub hold_id: String,
        /// The listing held.
        pub listing_id: String,
        /// The reservation holding it (one hold per reservation).
        pub reservation_id: String,
        /// Window start (ms since the epoch, inclusive).
        pub start_ms: i64,
        /// Window end (ms since the epoch, exclusive).
        pub end_ms: i64,
        /// `HELD`, `BOOKED`, `RELEASED` or `EXPIRED`.
        pub status: String,
        /// When a HELD hold lapses.
        pub expires_at_ms: i64,
        /// Created.
        pub created_at_ms: i64,
        /// Last changed.
        pub updated_at_ms: i64,
    }

    /// No navigable relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub use entity::Model as HoldRow;

/// The states that block a window (the overlap constraint's `status IN ('HELD', 'BOOKED')`).
pub const ACTIVE: [HoldStatus; 2] = [HoldStatus::Held, HoldStatus::Booked];

/// What [`HoldRow::book`] came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Booking {
    /// HELD -> BOOKED.
    Booked,
    /// BOOKED already: nothing to do.
    AlreadyBooked,
    /// The hold had lapsed: HELD -> EXPIRED instead, and the booking is refused.
    Lapsed,
}

// === impl HoldRow: the states and their transitions ===
//
// HELD -> BOOKED (a booking), HELD -> EXPIRED (lapsed unconfirmed), HELD or BOOKED -> RELEASED
// (payment declined, reservation cancelled). RELEASED and EXPIRED are final.

impl HoldRow {
    /// The status as the proto enum (UNSPECIFIED for a stored name this build does not know).
    pub fn status(&self) -> HoldStatus {
        HoldStatus::from_stored(&self.status)
    }

    fn set(&mut self, status: HoldStatus, now_ms: i64) {
        self.status = status.stored().into();
        self.updated_at_ms = now_ms;
    }

    /// Books the hold at `now_ms` if it is HELD and not lapsed; a lapsed hold expires instead.
    /// A RELEASED or EXPIRED hold is FAILED_PRECONDITION.
    pub fn book(&mut self, now_ms: i64) -> Result<Booking, CatalogError> {
        match self.status() {
            HoldStatus::Booked => Ok(Booking::AlreadyBooked),
            HoldStatus::Held if self.expires_at_ms > now_ms => {
                self.set(HoldStatus::Booked, now_ms);
                Ok(Booking::Booked)
            }
            HoldStatus::Held => {
                self.set(HoldStatus::Expired, now_ms);
                Ok(Booking::Lapsed)
            }
            _ => Err(self.ended()),
        }
    }

    /// The answer to holding `[start_ms, end_ms)` of `listing_id` again for this hold's
    /// reservation (a retried call): this hold if it is that window and still HELD or BOOKED,
    /// else FAILED_PRECONDITION saying why not.
    pub fn held_again(&self, listing_id: &str, start_ms: i64, end_ms: i64) -> Result<Hold, CatalogError> {
        if self.listing_id != listing_id || self.start_ms != start_ms || self.end_ms != end_ms {
            return Err(CatalogError::FailedPrecondition(format!(
                "reservation {} already holds another window",
                self.reservation_id
            )));
        }
        if !self.is_active() {
            return Err(self.ended());
        }
        Ok(self.to_proto())
    }

    /// The refusal of a RELEASED or EXPIRED hold.
    fn ended(&self) -> CatalogError {
        CatalogError::FailedPrecondition(format!(
            "the hold of reservation {} was {}",
            self.reservation_id,
            self.status.to_lowercase()
        ))
    }

    /// Gives a HELD or BOOKED window back at `now_ms`; false when it no longer blocks it
    /// (released or expired already): nothing to do.
    pub fn release(&mut self, now_ms: i64) -> bool {
        if !self.is_active() {
            return false;
        }
        self.set(HoldStatus::Released, now_ms);
        true
    }

    /// The row as the API's `Hold`.
    pub fn to_proto(&self) -> Hold {
        let status = self.status();
        Hold {
            hold_id: self.hold_id.clone(),
            listing_id: self.listing_id.clone(),
            reservation_id: self.reservation_id.clone(),
            window: Some(TimeWindow::from_ms(self.start_ms, self.end_ms)),
            status: status as i32,
            expire_time: Some(timestamp_from_ms(self.expires_at_ms)),
            create_time: Some(timestamp_from_ms(self.created_at_ms)),
            update_time: Some(timestamp_from_ms(self.updated_at_ms)),
        }
    }

    /// HELD or BOOKED.
    pub fn is_active(&self) -> bool {
        ACTIVE.contains(&self.status())
    }
}

/// The hold of a reservation.
pub async fn find_by_reservation(db: &impl ReadModels, reservation_id: &str) -> Result<Option<HoldRow>, sea_orm::DbErr> {
    db.read_one(entity::Entity::find().filter(entity::Column::ReservationId.eq(reservation_id)))
        .await
}

/// The hold of a reservation, locked with its listing until the transaction ends, in one
/// statement (`SELECT holds.* FROM listings JOIN holds … WHERE reservation_id = $1 FOR UPDATE`
/// on PostgreSQL; SQLite's single writer already serialises writes). `None` when the
/// reservation has no hold.
///
/// The listing's lock is the one a new hold of that listing takes
/// ([`super::listings::find_for_update`]), so booking or releasing a window never interleaves
/// with a hold of the same listing, nor a booking with a release of the same hold. The listing
/// comes first in `FROM` so its row is locked first, in the order a new hold takes its locks
/// (the listing, then the lapsed holds it expires). Locking the hold's row too means a
/// statement that waited for another transaction reads the hold as that one left it.
pub async fn find_locked_by_reservation(db: &impl ConnectionTrait, reservation_id: &str) -> Result<Option<HoldRow>, sea_orm::DbErr> {
    use super::listings::entity as listings;
    let query = Query::select()
        .columns(entity::Column::iter().map(|column| (entity::Entity, column)))
        .from(listings::Entity)
        .inner_join(
            entity::Entity,
            Expr::col((entity::Entity, entity::Column::ListingId)).equals((listings::Entity, listings::Column::ListingId)),
        )
        .and_where(Expr::col((entity::Entity, entity::Column::ReservationId)).eq(reservation_id))
        .lock(LockType::Update)
        .to_owned();
    HoldRow::find_by_statement(db.get_database_backend().build(&query)).one(db).await
}

/// Inserts a hold as it is, without [`insert_new`]'s conflict clause (tests of the overlap
/// check); fails with [`super::NO_OVERLAP`] in the error when the window is taken.
#[cfg(test)]
pub async fn insert(db: &impl ConnectionTrait, row: HoldRow) -> Result<(), sea_orm::DbErr> {
    entity::Entity::insert(row.into_active_model())
        .exec_without_returning(db)
        .await
        .map(|_| ())
}

/// Inserts a new hold unless its reservation has one already: false then, and nothing changes
/// (one statement where a read and an insert took two). Fails with [`super::NO_OVERLAP`] in the
/// error when another reservation's hold or booking takes the window.
pub async fn insert_new(db: &impl ConnectionTrait, row: HoldRow) -> Result<bool, sea_orm::DbErr> {
    insert_unless_taken(db, row.into_active_model(), [entity::Column::ReservationId]).await
}

/// Writes a hold's status and change time, as a transition left them.
pub async fn save_status(db: &impl ConnectionTrait, row: &HoldRow) -> Result<(), sea_orm::DbErr> {
    entity::Entity::update_many()
        .col_expr(entity::Column::Status, Expr::value(row.status.clone()))
        .col_expr(entity::Column::UpdatedAtMs, Expr::value(row.updated_at_ms))
        .filter(entity::Column::HoldId.eq(row.hold_id.clone()))
        .exec(db)
        .await
        .map(|_| ())
}

/// Expires lapsed HELD holds (of one listing, or all); returns how many.
pub async fn expire_lapsed(db: &impl ConnectionTrait, listing_id: Option<&str>, now_ms: i64) -> Result<u64, sea_orm::DbErr> {
    let mut q = entity::Entity::update_many()
        .col_expr(entity::Column::Status, Expr::value(HoldStatus::Expired.stored()))
        .col_expr(entity::Column::UpdatedAtMs, Expr::value(now_ms))
        .filter(entity::Column::Status.eq(HoldStatus::Held.stored()))
        .filter(entity::Column::ExpiresAtMs.lte(now_ms));
    if let Some(id) = listing_id {
        q = q.filter(entity::Column::ListingId.eq(id));
    }
    Ok(q.exec(db).await?.rows_affected)
}

/// The listing `listing_id`, locked until the transaction ends as
/// [`super::listings::find_for_update`] locks it, with its lapsed HELD holds expired at `now_ms`:
/// what a new hold of the listing does first. `None`, and nothing expired, when there is no such
/// listing.
///
/// On PostgreSQL it is one statement where it took two (`LOCK_AND_EXPIRE`). The listing's lock
/// still comes first, in the order every writer of its windows takes its locks. The statement's
/// own query reads the listing with `FOR UPDATE`. PostgreSQL runs the `UPDATE` in its `WITH`
/// after that query has finished, and only once the listing was found. SQLite's single writer
/// already serialises writes: its two statements run one after the other.
pub async fn lock_listing_expiring_lapsed(
    db: &impl ConnectionTrait,
    listing_id: &str,
    now_ms: i64,
) -> Result<Option<ListingRow>, sea_orm::DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        let listing = super::listings::find_for_update(db, listing_id).await?;
        if listing.is_some() {
            expire_lapsed(db, Some(listing_id), now_ms).await?;
        }
        return Ok(listing);
    }
    let values: [sea_orm::Value; 4] = [
        listing_id.into(),
        now_ms.into(),
        HoldStatus::Held.stored().into(),
        HoldStatus::Expired.stored().into(),
    ];
    ListingRow::find_by_statement(Statement::from_sql_and_values(DbBackend::Postgres, LOCK_AND_EXPIRE, values))
        .one(db)
        .await
}

/// [`lock_listing_expiring_lapsed`] on PostgreSQL: `$1` the listing, `$2` now, `$3` HELD, `$4`
/// EXPIRED. `listing` is read twice, so it is computed once, and its row locked once.
const LOCK_AND_EXPIRE: &str = "WITH listing AS (SELECT * FROM listings WHERE listing_id = $1 FOR UPDATE), \
     expired AS (UPDATE holds SET status = $4, updated_at_ms = $2 \
       WHERE listing_id = $1 AND status = $3 AND expires_at_ms <= $2 AND EXISTS (SELECT 1 FROM listing)) \
     SELECT * FROM listing";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testing;

    fn hold(status: HoldStatus, expires_at_ms: i64) -> HoldRow {
        HoldRow {
            hold_id: "h-1".into(),
            listing_id: "l-1".into(),
            reservation_id: "r-1".into(),
            start_ms: 0,
            end_ms: 1,
            status: status.stored().into(),
            expires_at_ms,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn stored_forms_are_the_tables() {
        let names = [HoldStatus::Held, HoldStatus::Booked, HoldStatus::Released, HoldStatus::Expired].map(HoldStatus::stored);
        assert_eq!(names, ["HELD", "BOOKED", "RELEASED", "EXPIRED"]);
        for name in names {
            assert_eq!(HoldStatus::from_stored(name).stored(), name);
        }
        assert_eq!(HoldStatus::from_stored("garbage"), HoldStatus::Unspecified);
    }

    #[test]
    fn a_held_hold_is_booked_until_it_lapses() {
        let mut h = hold(HoldStatus::Held, 100);
        assert_eq!(h.book(99).expect("booked"), Booking::Booked);
        assert_eq!((h.status(), h.updated_at_ms), (HoldStatus::Booked, 99));
        assert_eq!(h.book(200).expect("again"), Booking::AlreadyBooked, "a booking does not lapse");
        assert_eq!(h.updated_at_ms, 99);

        let mut h = hold(HoldStatus::Held, 100);
        assert_eq!(h.book(100).expect("lapsed"), Booking::Lapsed);
        assert_eq!((h.status(), h.updated_at_ms), (HoldStatus::Expired, 100));
    }

    #[test]
    fn released_and_expired_holds_are_final() {
        for status in [HoldStatus::Released, HoldStatus::Expired] {
            let mut h = hold(status, i64::MAX);
            let err = h.book(0).expect_err("final");
            let expected = format!("the hold of reservation r-1 was {}", status.stored().to_lowercase());
            assert!(matches!(&err, CatalogError::FailedPrecondition(m) if *m == expected), "{err:?}");
            assert!(!h.release(5), "nothing to release");
            assert_eq!((h.status(), h.updated_at_ms), (status, 0));
        }
    }

    #[test]
    fn a_retried_hold_is_answered_by_the_first_only_for_its_window_while_it_blocks_it() {
        let h = hold(HoldStatus::Held, 100);
        assert_eq!(h.held_again("l-1", 0, 1).expect("the same window"), h.to_proto());
        for (listing, start, end) in [("l-2", 0, 1), ("l-1", 0, 2), ("l-1", 1, 2)] {
            let err = h.held_again(listing, start, end).expect_err("another window");
            assert!(
                matches!(&err, CatalogError::FailedPrecondition(m) if m == "reservation r-1 already holds another window"),
                "{err:?}"
            );
        }
        let booked = hold(HoldStatus::Booked, 100);
        assert_eq!(booked.held_again("l-1", 0, 1).expect("booked"), booked.to_proto());
        let err = hold(HoldStatus::Expired, 100).held_again("l-1", 0, 1).expect_err("expired");
        assert!(
            matches!(&err, CatalogError::FailedPrecondition(m) if m == "the hold of reservation r-1 was expired"),
            "{err:?}"
        );
    }

    /// A migrated SQLite catalog with listing `l-1`, in a directory dropped with it.
    async fn catalog_with_a_listing() -> (tempfile::TempDir, sharemesh_mesh::storage::Db) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = testing::sqlite(&dir).await;
        testing::insert_listing(&db, "l-1", 0).await;
        (dir, db)
    }

    /// Hold `n` of `l-1` over `[start_ms, end_ms)`.
    fn window(n: usize, status: HoldStatus, start_ms: i64, end_ms: i64) -> HoldRow {
        testing::hold(n, "l-1", status, start_ms, end_ms)
    }

    fn is_overlap(err: &sea_orm::DbErr) -> bool {
        err.to_string().contains(super::super::NO_OVERLAP)
    }

    /// The longest window a listing takes (90 days) still refuses a window over its last hour,
    /// however long ago it started.
    #[tokio::test]
    async fn the_overlap_check_sees_the_longest_booking() {
        const DAY: i64 = 86_400_000;
        const HOUR: i64 = 3_600_000;
        let (_dir, db) = catalog_with_a_listing().await;
        insert(db.conn(), window(1, HoldStatus::Booked, 0, 90 * DAY))
            .await
            .expect("the longest booking");
        let err = insert(db.conn(), window(2, HoldStatus::Held, 90 * DAY - HOUR, 90 * DAY + HOUR))
            .await
            .expect_err("its last hour is taken");
        assert!(is_overlap(&err), "{err}");
        insert(db.conn(), window(3, HoldStatus::Held, 90 * DAY, 90 * DAY + HOUR))
            .await
            .expect("right after it is free");
        // A released window taken up again is checked the same way.
        insert(db.conn(), window(4, HoldStatus::Released, 90 * DAY - HOUR, 90 * DAY))
            .await
            .expect("released windows do not count");
        let mut again = window(4, HoldStatus::Held, 90 * DAY - HOUR, 90 * DAY);
        again.updated_at_ms = 1;
        let err = save_status(db.conn(), &again).await.expect_err("held again over the booking");
        assert!(is_overlap(&err), "{err}");
    }

    /// The check reads one hold per status (the one starting last before the new window ends):
    /// among many holds and bookings it refuses exactly the windows that overlap one of them.
    #[tokio::test]
    async fn among_many_holds_exactly_the_overlapping_windows_are_refused() {
        const HOUR: i64 = 3_600_000;
        let (_dir, db) = catalog_with_a_listing().await;
        // An hour every 11 hours, HELD and BOOKED in turn: hold n is [11n, 11n + 1) hours.
        let start = |n: usize| i64::try_from(n).expect("small") * 11 * HOUR;
        for n in 0..300usize {
            let status = if n % 2 == 0 { HoldStatus::Held } else { HoldStatus::Booked };
            insert(db.conn(), window(n, status, start(n), start(n) + HOUR))
                .await
                .expect("no overlap");
        }
        let refused = [
            (start(120) + HOUR / 2, start(120) + 2 * HOUR, "over the end of a hold"),
            (start(121) - HOUR, start(121) + 1, "over the start of a booking"),
            (start(150) + 1, start(150) + 2, "inside a hold"),
            (start(10) - 1, start(13), "over several"),
            (start(0), start(300), "over all of them"),
            (start(299), start(299) + HOUR, "the same window as the last"),
        ];
        for (n, (from, to, what)) in (1000..).zip(refused) {
            let err = insert(db.conn(), window(n, HoldStatus::Held, from, to)).await.expect_err(what);
            assert!(is_overlap(&err), "{what}: {err}");
        }
        let free = [
            (start(120) + HOUR, start(121), "the whole gap between two"),
            (start(299) + HOUR, start(400), "after the last"),
            (start(0) - HOUR, start(0), "right before the first"),
        ];
        for (n, (from, to, what)) in (2000..).zip(free) {
            insert(db.conn(), window(n, HoldStatus::Booked, from, to)).await.expect(what);
        }
        // A hold booked is checked against every other row, not against itself.
        let mut booked = window(0, HoldStatus::Booked, start(0), start(0) + HOUR);
        booked.updated_at_ms = 1;
        save_status(db.conn(), &booked).await.expect("booking a hold overlaps only itself");
    }

    #[test]
    fn held_or_booked_windows_are_released() {
        for status in ACTIVE {
            let mut h = hold(status, 0);
            assert!(h.is_active());
            assert!(h.release(7));
            assert_eq!((h.status(), h.updated_at_ms, h.is_active()), (HoldStatus::Released, 7, false));
        }
    }

    /// A reservation's hold is inserted once: holding again, in any window, inserts nothing and
    /// is not refused as an overlap with its own first hold (SQLite's trigger runs before the
    /// conflict is found, so it leaves such a row out), while another reservation's hold over
    /// the window is refused.
    async fn a_reservations_hold_is_inserted_once(db: &sharemesh_mesh::storage::Db) {
        testing::insert_listing(db, "l-1", 0).await;
        assert!(
            insert_new(db.conn(), window(1, HoldStatus::Held, 0, 10))
                .await
                .expect("the first hold")
        );
        for (start, end) in [(0, 10), (5, 15), (20, 30)] {
            let mut again = window(1, HoldStatus::Held, start, end);
            again.hold_id = format!("h-1-{start}");
            let inserted = insert_new(db.conn(), again).await.expect("held again: skipped");
            assert!(!inserted, "r-1 again over [{start}, {end})");
        }
        let err = insert_new(db.conn(), window(2, HoldStatus::Held, 5, 15))
            .await
            .expect_err("another reservation over r-1's window");
        assert!(is_overlap(&err), "{err}");
        assert!(
            insert_new(db.conn(), window(3, HoldStatus::Held, 10, 20))
                .await
                .expect("right after r-1's")
        );
        let first = find_by_reservation(db, "r-1").await.expect("read").expect("r-1's hold");
        assert_eq!(first, window(1, HoldStatus::Held, 0, 10), "r-1's first hold, unchanged");
        assert_eq!(find_by_reservation(db, "r-2").await.expect("read"), None);
    }

    #[tokio::test]
    async fn on_sqlite_a_reservations_hold_is_inserted_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        a_reservations_hold_is_inserted_once(&testing::sqlite(&dir).await).await;
    }

    #[tokio::test]
    async fn on_postgresql_a_reservations_hold_is_inserted_once() {
        let Some(pg) = sharemesh_mesh::testing::PgDatabase::create().await else {
            return;
        };
        let db = testing::migrated(&pg.url).await;
        a_reservations_hold_is_inserted_once(&db).await;
        drop(db);
        pg.drop_now().await;
    }

    /// Holds `r-1` to `r-3` on listings `l-1` and `l-2`, inserted in `db`.
    async fn three_holds(db: &sharemesh_mesh::storage::Db) -> Vec<HoldRow> {
        testing::insert_listing(db, "l-1", 0).await;
        testing::insert_listing(db, "l-2", 1).await;
        let rows = vec![
            testing::hold(1, "l-1", HoldStatus::Booked, 0, 10),
            testing::hold(2, "l-1", HoldStatus::Held, 10, 20),
            testing::hold(3, "l-2", HoldStatus::Held, 10, 20),
        ];
        for row in &rows {
            insert(db.conn(), row.clone()).await.expect("a hold");
        }
        rows
    }

    /// The locked read finds exactly a reservation's hold, or none.
    async fn the_locked_read_finds_the_hold_of_a_reservation(db: &sharemesh_mesh::storage::Db) -> Vec<HoldRow> {
        let rows = three_holds(db).await;
        let tx = db.begin_write().await.expect("begin");
        for row in &rows {
            let found = find_locked_by_reservation(&*tx, &row.reservation_id).await.expect("read");
            assert_eq!(found.as_ref(), Some(row));
        }
        assert_eq!(find_locked_by_reservation(&*tx, "r-9").await.expect("read"), None);
        tx.commit().await.expect("commit");
        rows
    }

    #[tokio::test]
    async fn on_sqlite_the_locked_read_finds_the_hold_of_a_reservation() {
        let dir = tempfile::tempdir().expect("tempdir");
        the_locked_read_finds_the_hold_of_a_reservation(&testing::sqlite(&dir).await).await;
    }

    /// On PostgreSQL the read also locks the hold's row and its listing's until the transaction
    /// ends, and nothing else: another session cannot take either meanwhile.
    #[tokio::test]
    async fn on_postgresql_the_locked_read_locks_the_hold_and_its_listing() {
        let Some(pg) = sharemesh_mesh::testing::PgDatabase::create().await else {
            return;
        };
        let db = testing::migrated(&pg.url).await;
        the_locked_read_finds_the_hold_of_a_reservation(&db).await;
        let tx = db.begin_write().await.expect("begin");
        find_locked_by_reservation(&*tx, "r-2").await.expect("read").expect("r-2's hold");
        let takes = |sql: String| {
            let db = db.clone();
            async move { db.conn().execute_unprepared(&format!("{sql} FOR UPDATE NOWAIT")).await }
        };
        let listing = |id: &str| format!("SELECT 1 FROM listings WHERE listing_id = '{id}'");
        let hold = |id: &str| format!("SELECT 1 FROM holds WHERE hold_id = '{id}'");
        for locked in [listing("l-1"), hold("h-2")] {
            let err = takes(locked.clone()).await.expect_err("locked by the read");
            assert_eq!(
                sharemesh_mesh::storage::error_code(&err).as_deref(),
                Some("55P03"),
                "{locked}: {err}"
            );
        }
        for free in [listing("l-2"), hold("h-1"), hold("h-3")] {
            takes(free.clone()).await.unwrap_or_else(|e| panic!("{free}: {e}"));
        }
        tx.commit().await.expect("commit");
        takes(listing("l-1")).await.expect("free once the read's transaction ended");
        drop(db);
        pg.drop_now().await;
    }

    /// Locking a listing for a hold expires its lapsed holds and no others: not one that has
    /// not lapsed, not a booking, not another listing's.
    async fn locking_a_listing_expires_its_lapsed_holds(db: &sharemesh_mesh::storage::Db) -> sharemesh_mesh::storage::WriteTxn {
        use sea_orm::QueryOrder;
        testing::insert_listing(db, "l-1", 0).await;
        testing::insert_listing(db, "l-2", 1).await;
        let expiring = |n: usize, listing: &str, status, expires_at_ms| HoldRow {
            expires_at_ms,
            ..testing::hold(n, listing, status, 10 * n as i64, 10 * n as i64 + 10)
        };
        for row in [
            expiring(1, "l-1", HoldStatus::Held, 100),
            expiring(2, "l-1", HoldStatus::Held, 101),
            expiring(3, "l-1", HoldStatus::Booked, 50),
            expiring(4, "l-2", HoldStatus::Held, 50),
        ] {
            insert(db.conn(), row).await.expect("insert");
        }
        let tx = db.begin_write().await.expect("begin");
        assert_eq!(lock_listing_expiring_lapsed(&*tx, "l-9", 100).await.expect("lock"), None);
        let listing = lock_listing_expiring_lapsed(&*tx, "l-1", 100).await.expect("lock").expect("l-1");
        assert_eq!((listing.listing_id.as_str(), listing.title.as_str()), ("l-1", "Avante"));
        let holds = entity::Entity::find()
            .order_by_asc(entity::Column::HoldId)
            .all(&*tx)
            .await
            .expect("read");
        let states: Vec<_> = holds.iter().map(|h| (h.status(), h.updated_at_ms)).collect();
        assert_eq!(
            states,
            [
                (HoldStatus::Expired, 100),
                (HoldStatus::Held, 0),
                (HoldStatus::Booked, 0),
                (HoldStatus::Held, 0)
            ]
        );
        tx
    }

    #[tokio::test]
    async fn on_sqlite_locking_a_listing_expires_its_lapsed_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = testing::sqlite(&dir).await;
        locking_a_listing_expires_its_lapsed_holds(&db)
            .await
            .commit()
            .await
            .expect("commit");
    }

    /// On PostgreSQL, in one statement, with the listing locked until the transaction ends.
    #[tokio::test]
    async fn on_postgresql_locking_a_listing_expires_its_lapsed_holds_and_locks_it() {
        let Some(pg) = sharemesh_mesh::testing::PgDatabase::create().await else {
            return;
        };
        let db = testing::migrated(&pg.url).await;
        let tx = locking_a_listing_expires_its_lapsed_holds(&db).await;
        let take = |id: &'static str| {
            let db = db.clone();
            async move {
                let sql = format!("SELECT 1 FROM listings WHERE listing_id = '{id}' FOR UPDATE NOWAIT");
                db.conn().execute_unprepared(&sql).await
            }
        };
        let err = take("l-1").await.expect_err("locked");
        assert_eq!(sharemesh_mesh::storage::error_code(&err).as_deref(), Some("55P03"), "{err}");
        take("l-2").await.expect("another listing is free");
        tx.commit().await.expect("commit");
        take("l-1").await.expect("free once the transaction ended");
        drop(db);
        pg.drop_now().await;
    }
}
