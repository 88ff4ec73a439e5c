-- The unit's bank account is sealed like every account (kit::sealing, under the row's key_version). Accounts an
-- earlier version stored in `bank_account` are sealed by the service at start-up and the clear column emptied;
-- from then on every sealed value of a row is under its one key_version.
alter table units add column bank_account_sealed bytea;
comment on column units.bank_account is 'legacy: sealed into bank_account_sealed and emptied at start-up';
