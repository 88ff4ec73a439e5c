-- 视同缴费年限: periods worked before the 2014-10 reform that count as contributed, kept with the person they belong
-- to: [{unit, from: "YYYY-MM", to: "YYYY-MM", months, reason}]. They are read and written only with the person.
alter table persons add column deemed_periods jsonb not null default '[]';
