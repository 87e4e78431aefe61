//! RocksDB options of the state store; the module docs of [`super`] say why each is set.

use std::path::Path;

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Options, DB};

use super::{spill, BLOCK_BYTES, CF_META, CF_MODELS, CF_SPILL, MAX_TOTAL_WAL_BYTES};

/// See the module docs of [`super`] (Memory).
pub const DB_WRITE_BUFFER_BYTES: usize = 16 << 20;
/// See the module docs of [`super`] (Memory).
pub const MODELS_WRITE_BUFFER_BYTES: usize = 8 << 20;
/// See the module docs of [`super`] (Memory).
pub const BLOCK_CACHE_BYTES: usize = 8 << 20;

/// Column-family options; see the module docs for why.
fn cf_options(models: bool, cache: &Cache) -> Options {
    let mut o = Options::default();
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    if models {
        table.set_block_size(BLOCK_BYTES);
        o.set_compression_type(DBCompressionType::Lz4);
        o.set_level_compaction_dynamic_level_bytes(true);
        o.set_write_buffer_size(MODELS_WRITE_BUFFER_BYTES);
    }
    o.set_block_based_table_factory(&table);
    o
}

/// Database options; see the module docs for why.
pub(super) fn db_options() -> Options {
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    o.set_max_background_jobs(2);
    o.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
    o.set_bytes_per_sync(1 << 20);
    o.set_db_write_buffer_size(DB_WRITE_BUFFER_BYTES);
    // RocksDB's own info LOG: bounded, it is not where we report.
    o.set_keep_log_file_num(3);
    o.set_max_log_file_size(8 << 20);
    o
}

pub(super) fn descriptors() -> Vec<ColumnFamilyDescriptor> {
    let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    vec![
        ColumnFamilyDescriptor::new(CF_META, cf_options(false, &cache)),
        ColumnFamilyDescriptor::new(CF_MODELS, cf_options(true, &cache)),
        ColumnFamilyDescriptor::new(CF_SPILL, spill::cf_options(&cache)),
    ]
}

/// The families a read-only open can ask for: those the database has (one written before
/// the `spill` family existed has none).
pub(super) fn existing_descriptors(path: &Path) -> Vec<ColumnFamilyDescriptor> {
    let have = DB::list_cf(&db_options(), path).unwrap_or_default();
    descriptors().into_iter().filter(|d| have.is_empty() || have.iter().any(|h| h == d.name())).collect()
}
