//! The catalog's tables: listings and holds (a hold becomes a booking when confirmed).
//!
//! No two HELD/BOOKED rows of one listing may overlap. The database enforces it: an exclusion
//! constraint on PostgreSQL (`btree_gist`), triggers on SQLite (whose single writer makes the
//! check atomic). Both raise `holds_no_overlap`, which [`holds`] maps to a domain error.

pub mod holds;
pub mod listings;

use sea_orm_migration::{MigrationTrait, MigratorTrait};
use sharemesh_mesh::storage::{SqlMigration, with_mesh_tables};

/// Name of the constraint (PostgreSQL) and trigger error (SQLite) that forbids overlaps.
pub const NO_OVERLAP: &str = "holds_no_overlap";

/// The listings table and its index: the same on both backends.
macro_rules! listings {
    () => {
        "CREATE TABLE listings (
        listing_id TEXT PRIMARY KEY,
        host_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        title TEXT NOT NULL,
        description TEXT NOT NULL,
        price_minor BIGINT NOT NULL,
        currency TEXT NOT NULL,
        car_model TEXT,
        car_type INTEGER,
        seats INTEGER,
        category TEXT,
        session_minutes INTEGER,
        status TEXT NOT NULL,
        version BIGINT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        updated_at_ms BIGINT NOT NULL
    );
    CREATE INDEX listings_by_created ON listings (created_at_ms DESC, listing_id);
    "
    };
}

/// The columns of holds: the same on both backends; the overlap rule differs.
macro_rules! hold_columns {
    () => {
        "CREATE TABLE holds (
        hold_id TEXT PRIMARY KEY,
        listing_id TEXT NOT NULL REFERENCES listings (listing_id),
        reservation_id TEXT NOT NULL UNIQUE,
        start_ms BIGINT NOT NULL,
        end_ms BIGINT NOT NULL,
        status TEXT NOT NULL,
        expires_at_ms BIGINT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        updated_at_ms BIGINT NOT NULL,
        CHECK (end_ms > start_ms)"
    };
}

/// The indexes of holds.
macro_rules! hold_indexes {
    () => {
        "CREATE INDEX holds_by_listing ON holds (listing_id, status, start_ms);
    CREATE INDEX holds_expiring ON holds (status, expires_at_ms)"
    };
}

/// SQLite's overlap check, bounded: since no window is longer than
/// [`crate::domain::MAX_WINDOW_MS`] (90 days, the literal below), a hold that overlaps a new window
/// starts less than 90 days before it, so the check reads only the holds of that stretch through
/// `holds_by_listing` instead of every booking the listing ever had (m0001's triggers scanned
/// them all, under SQLite's single writer lock, on every hold and every booking). Replaced by
/// m0003's `latest_before!`.
macro_rules! bounded_overlap {
    () => {
        "h.listing_id = NEW.listing_id AND h.status IN ('HELD', 'BOOKED') AND h.start_ms < NEW.end_ms AND h.start_ms > NEW.start_ms - 7776000000 AND NEW.start_ms < h.end_ms"
    };
}

/// SQLite's overlap check in one index seek per status (m0003). The HELD and BOOKED holds of a
/// listing never overlap one another (this check keeps it so), so ordered by start they are
/// ordered by end too: of those starting before the new window ends, only the one that starts
/// last can reach into it. The check reads that one hold of each status (`holds_by_listing`,
/// backwards from the new end) instead of every hold of the 90 days before the window (m0002
/// read a hold and its row for each: about 200 a check for a car booked every 11 hours, 4,000
/// for a talent booked every half hour). `$other` leaves out the row being updated.
macro_rules! latest_before {
    ($status:literal, $other:literal) => {
        concat!(
            "(SELECT h.end_ms FROM holds h WHERE h.listing_id = NEW.listing_id AND h.status = '",
            $status,
            "'",
            $other,
            " AND h.start_ms < NEW.end_ms ORDER BY h.start_ms DESC LIMIT 1) > NEW.start_ms"
        )
    };
}

/// The trigger `$name` refusing a HELD or BOOKED row that overlaps another (`latest_before!`),
/// when `$when` holds too.
macro_rules! no_overlap_trigger {
    ($name:literal, $event:literal, $other:literal) => {
        no_overlap_trigger!($name, $event, "", $other)
    };
    ($name:literal, $event:literal, $when:literal, $other:literal) => {
        concat!(
            "CREATE TRIGGER ",
            $name,
            " BEFORE ",
            $event,
            " ON holds WHEN NEW.status IN ('HELD', 'BOOKED')",
            $when,
            " AND (",
            latest_before!("HELD", $other),
            " OR ",
            latest_before!("BOOKED", $other),
            ") BEGIN SELECT RAISE(ABORT, 'holds_no_overlap'); END"
        )
    };
}

const MIGRATIONS: &[SqlMigration] = &[SqlMigration {
    name: "m0001_catalog_listings_holds",
    // SQLite: triggers (its single writer makes the check atomic).
    sqlite: concat!(
        listings!(),
        hold_columns!(),
        "
    );
    ",
        hold_indexes!(),
        ";
    CREATE TRIGGER holds_no_overlap_insert BEFORE INSERT ON holds WHEN NEW.status IN ('HELD', 'BOOKED') AND EXISTS (SELECT 1 FROM holds h WHERE h.listing_id = NEW.listing_id AND h.status IN ('HELD', 'BOOKED') AND h.start_ms < NEW.end_ms AND NEW.start_ms < h.end_ms) BEGIN SELECT RAISE(ABORT, 'holds_no_overlap'); END;
    CREATE TRIGGER holds_no_overlap_update BEFORE UPDATE OF status, start_ms, end_ms ON holds WHEN NEW.status IN ('HELD', 'BOOKED') AND EXISTS (SELECT 1 FROM holds h WHERE h.hold_id <> NEW.hold_id AND h.listing_id = NEW.listing_id AND h.status IN ('HELD', 'BOOKED') AND h.start_ms < NEW.end_ms AND NEW.start_ms < h.end_ms) BEGIN SELECT RAISE(ABORT, 'holds_no_overlap'); END"
    ),
    // PostgreSQL: an exclusion constraint.
    postgres: concat!(
        "CREATE EXTENSION IF NOT EXISTS btree_gist;
    ",
        listings!(),
        hold_columns!(),
        ",
        CONSTRAINT holds_no_overlap EXCLUDE USING gist (listing_id WITH =, int8range(start_ms, end_ms) WITH &&) WHERE (status IN ('HELD', 'BOOKED'))
    );
    ",
        hold_indexes!()
    ),
}, SqlMigration {
    name: "m0002_catalog_bounded_overlap_check",
    sqlite: concat!(
        "DROP TRIGGER holds_no_overlap_insert;
    DROP TRIGGER holds_no_overlap_update;
    CREATE TRIGGER holds_no_overlap_insert BEFORE INSERT ON holds WHEN NEW.status IN ('HELD', 'BOOKED') AND EXISTS (SELECT 1 FROM holds h WHERE ",
        bounded_overlap!(),
        ") BEGIN SELECT RAISE(ABORT, 'holds_no_overlap'); END;
    CREATE TRIGGER holds_no_overlap_update BEFORE UPDATE OF status, start_ms, end_ms ON holds WHEN NEW.status IN ('HELD', 'BOOKED') AND EXISTS (SELECT 1 FROM holds h WHERE h.hold_id <> NEW.hold_id AND ",
        bounded_overlap!(),
        ") BEGIN SELECT RAISE(ABORT, 'holds_no_overlap'); END"
    ),
    // The exclusion constraint searches its GiST index: nothing to change.
    postgres: "SELECT 1",
}, SqlMigration {
    name: "m0003_catalog_overlap_check_by_latest_hold",
    sqlite: concat!(
        "DROP TRIGGER holds_no_overlap_insert;
    DROP TRIGGER holds_no_overlap_update;
    ",
        no_overlap_trigger!("holds_no_overlap_insert", "INSERT", ""),
        ";
    ",
        no_overlap_trigger!("holds_no_overlap_update", "UPDATE OF status, start_ms, end_ms", " AND h.hold_id <> NEW.hold_id")
    ),
    postgres: "SELECT 1",
}, SqlMigration {
    name: "m0004_catalog_overlap_check_after_the_reservations_own_hold",
    // A hold is inserted `ON CONFLICT (reservation_id) DO NOTHING` (`holds::insert_new`), and a
    // BEFORE INSERT trigger runs before that conflict is found: a reservation's repeated hold
    // would overlap its own first one and be refused instead of skipped. The check now leaves out
    // a row whose reservation has a hold already (one seek of the unique index): the row is not
    // inserted anyway, as on PostgreSQL, whose arbiter index is checked before the exclusion
    // constraint.
    sqlite: concat!(
        "DROP TRIGGER holds_no_overlap_insert;
    ",
        no_overlap_trigger!(
            "holds_no_overlap_insert",
            "INSERT",
            " AND NOT EXISTS (SELECT 1 FROM holds o WHERE o.reservation_id = NEW.reservation_id)",
            ""
        )
    ),
    postgres: "SELECT 1",
}];

/// The catalog's migrations: the mesh's outbox and inbox, then the catalog's own tables.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        with_mesh_tables(MIGRATIONS)
    }
}

impl sharemesh_mesh::storage::Tables for Migrator {
    fn tables(tables: &mut sharemesh_mesh::storage::writes::TableTypes) {
        tables.add::<holds::entity::Entity>().add::<listings::entity::Entity>();
    }
}

/// Test data for the queries' tests.
#[cfg(test)]
pub(crate) mod testing {
    use sea_orm::ConnectionTrait;
    use sharemesh_contracts::catalog::v1::HoldStatus;
    use sharemesh_mesh::storage::Db;

    use super::holds::HoldRow;

    /// The catalog's database at `url`, migrated.
    pub(crate) async fn migrated(url: &str) -> Db {
        let db = Db::connect(url).await.expect("connect");
        db.migrate::<super::Migrator>().await.expect("migrate");
        db
    }

    /// A migrated catalog on a SQLite file in `dir`.
    pub(crate) async fn sqlite(dir: &tempfile::TempDir) -> Db {
        migrated(&format!("sqlite://{}/catalog.db?mode=rwc", dir.path().display())).await
    }

    /// Hold `n` (`h-n`, of reservation `r-n`) of `listing_id` over `[start_ms, end_ms)`, never
    /// expiring.
    pub(crate) fn hold(n: usize, listing_id: &str, status: HoldStatus, start_ms: i64, end_ms: i64) -> HoldRow {
        HoldRow {
            hold_id: format!("h-{n}"),
            listing_id: listing_id.into(),
            reservation_id: format!("r-{n}"),
            start_ms,
            end_ms,
            status: status.stored().into(),
            expires_at_ms: i64::MAX,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    /// Inserts an active car listing `listing_id`, created at `created_at_ms`.
    pub(crate) async fn insert_listing(db: &Db, listing_id: &str, created_at_ms: i64) {
        db.conn()
            .execute_unprepared(&format!(
                "INSERT INTO listings (listing_id, host_id, kind, title, description, price_minor, currency, status, version, created_at_ms, updated_at_ms)
                 VALUES ('{listing_id}', 'host-1', 'CAR', 'Avante', '', 1000, 'KRW', 'ACTIVE', 1, {created_at_ms}, 0)"
            ))
            .await
            .expect("a listing");
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::ConnectionTrait;
    use sharemesh_mesh::storage::Db;

    /// Replicas starting at the same instant on an empty PostgreSQL database (the catalog's
    /// migrations create an extension, the hardest case) all come up, and each migration is
    /// applied once.
    #[tokio::test]
    async fn on_postgresql_replicas_migrating_at_once_all_come_up() {
        let Some(pg) = sharemesh_mesh::testing::PgDatabase::create().await else {
            return;
        };
        let mut replicas = Vec::new();
        for _ in 0..4 {
            replicas.push(Db::connect_with(&pg.url, Some(2)).await.expect("connect"));
        }
        let mut started = tokio::task::JoinSet::new();
        for db in &replicas {
            let db = db.clone();
            started.spawn(async move { db.migrate::<super::Migrator>().await });
        }
        while let Some(outcome) = started.join_next().await {
            outcome
                .expect("no panic")
                .expect("every replica migrates or finds nothing left to do");
        }
        let applied = replicas[0]
            .conn()
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DatabaseBackend::Postgres,
                "SELECT count(*) AS n, count(DISTINCT version) AS d FROM seaql_migrations",
            ))
            .await
            .expect("read")
            .expect("a row");
        let (n, d): (i64, i64) = (applied.try_get("", "n").expect("n"), applied.try_get("", "d").expect("d"));
        assert_eq!(n, d, "a migration applied twice");
        assert_eq!(
            n as usize,
            <super::Migrator as sea_orm_migration::MigratorTrait>::migrations().len()
        );
        drop(replicas);
        pg.drop_now().await;
    }
}
