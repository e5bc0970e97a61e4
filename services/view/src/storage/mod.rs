//! The read models' tables. Each row keeps the version of the aggregate it reflects, so an
//! older event never overwrites a newer state.

pub mod listing_views;
pub mod reservation_views;

use sea_orm_migration::{MigrationTrait, MigratorTrait};
use sharemesh_mesh::storage::{SqlMigration, with_mesh_tables};

const TABLES: &str = "CREATE TABLE listing_views (
        listing_id TEXT PRIMARY KEY,
        host_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        title TEXT NOT NULL,
        price_minor BIGINT NOT NULL,
        currency TEXT NOT NULL,
        car_model TEXT,
        car_type INTEGER,
        seats INTEGER,
        category TEXT,
        session_minutes INTEGER,
        status TEXT NOT NULL,
        version BIGINT NOT NULL,
        updated_at_ms BIGINT NOT NULL
    );
    CREATE INDEX listing_views_by_kind ON listing_views (kind, status, listing_id);
    CREATE TABLE reservation_views (
        reservation_id TEXT PRIMARY KEY,
        listing_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        host_id TEXT NOT NULL,
        listing_title TEXT NOT NULL,
        listing_kind TEXT NOT NULL,
        start_ms BIGINT NOT NULL,
        end_ms BIGINT NOT NULL,
        amount_minor BIGINT NOT NULL,
        currency TEXT NOT NULL,
        reservation_status TEXT NOT NULL,
        status_reason TEXT NOT NULL,
        reservation_version BIGINT NOT NULL,
        payment_status TEXT NOT NULL,
        payment_version BIGINT NOT NULL,
        updated_at_ms BIGINT NOT NULL
    );
    CREATE INDEX reservation_views_by_listing ON reservation_views (listing_id, start_ms);
    CREATE INDEX reservation_views_by_customer ON reservation_views (customer_id, updated_at_ms)";

/// A listing view shows the reservations that have not ended yet, those ending first: an index
/// by end lets that read stop at its limit however long the listing's history.
const UPCOMING_INDEX: &str = "DROP INDEX reservation_views_by_listing;
    CREATE INDEX reservation_views_upcoming ON reservation_views (listing_id, end_ms, reservation_id)";

const MIGRATIONS: &[SqlMigration] = &[
    SqlMigration {
        name: "m0001_view_read_models",
        sqlite: TABLES,
        postgres: TABLES,
    },
    SqlMigration {
        name: "m0002_view_upcoming_reservations",
        sqlite: UPCOMING_INDEX,
        postgres: UPCOMING_INDEX,
    },
];

/// The view's migrations: the mesh's outbox and inbox, then the read models.
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        with_mesh_tables(MIGRATIONS)
    }
}

impl sharemesh_mesh::storage::Tables for Migrator {
    fn tables(tables: &mut sharemesh_mesh::storage::writes::TableTypes) {
        tables
            .add::<listing_views::entity::Entity>()
            .add::<reservation_views::entity::Entity>();
    }
}
