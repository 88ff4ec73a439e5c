-- The development population registry (公安库 stand-in): who is known, under which name, and who has died.
create table population (
    id_number text primary key,
    name      text    not null,
    deceased  boolean not null default false
);
