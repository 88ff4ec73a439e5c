-- People of the units: in-service staff (工作人员), retirees before 2014-10-01 and retirees on or after it.

-- Code lists as versioned data, not enums: provinces differ and lists change. A code is offered while today lies in
-- [valid_from, valid_to).
create table code_lists (
    list       text not null,
    code       text not null,
    label      text not null,
    valid_from date not null default date '1900-01-01',
    valid_to   date,
    sort       integer not null default 0,
    primary key (list, code, valid_from)
);

insert into code_lists (list, code, label, sort) values
    ('id_type', '01', '居民身份证（户口簿）', 1), ('id_type', '02', '中国人民解放军军官证', 2),
    ('id_type', '03', '中国人民武装警察警官证', 3), ('id_type', '04', '香港特区护照/港澳居民来往内地通行证', 4),
    ('id_type', '05', '澳门特区护照/港澳居民来往内地通行证', 5), ('id_type', '06', '台湾居民来往大陆通行证', 6),
    ('id_type', '07', '外国人永久居留证', 7), ('id_type', '08', '外国人护照', 8), ('id_type', '09', '残疾人证', 9),
    ('id_type', '10', '军烈属证明', 10), ('id_type', '11', '外国人就业证', 11), ('id_type', '12', '外国专家证', 12),
    ('id_type', '13', '外国人常驻记者证', 13), ('id_type', '14', '台港澳人员就业证', 14),
    ('id_type', '15', '回国（来华）定居专家证', 15), ('id_type', '16', '中国护照', 16),
    ('id_type', '17', '港澳台居民居住证', 17), ('id_type', '90', '社会保障卡', 90), ('id_type', '99', '其他身份证件', 99),
    ('funding_form', '1', '全额拨款', 1), ('funding_form', '2', '差额拨款', 2), ('funding_form', '3', '自收自支', 3),
    ('personnel_status', '1', '公务员', 1), ('personnel_status', '2', '参公人员', 2),
    ('personnel_status', '3', '事业管理人员', 3), ('personnel_status', '4', '专业技术人员', 4),
    ('personnel_status', '5', '工勤技能人员', 5),
    ('establishment', '1', '编制内', 1), ('establishment', '2', '编制外', 2),
    ('retirement_category', '1', '正常退休', 1), ('retirement_category', '2', '退职', 2),
    ('retirement_category', '3', '因病提前退休', 3), ('retirement_category', '4', '特殊工种提前退休', 4),
    ('retirement_category', '5', '工伤提前退休', 5), ('retirement_category', '6', '军转干部退休', 6),
    ('retirement_category', '7', '政策性提前退休', 7);

-- GB/T 3304 民族: 01–56, 97 其他, 98 外国血统中国籍人士.
insert into code_lists (list, code, label, sort)
select 'ethnicity', lpad(n::text, 2, '0'), label, n
from unnest(array['汉族','蒙古族','回族','藏族','维吾尔族','苗族','彝族','壮族','布依族','朝鲜族','满族','侗族','瑶族',
    '白族','土家族','哈尼族','哈萨克族','傣族','黎族','傈僳族','佤族','畲族','高山族','拉祜族','水族','东乡族','纳西族',
    '景颇族','柯尔克孜族','土族','达斡尔族','仫佬族','羌族','布朗族','撒拉族','毛南族','仡佬族','锡伯族','阿昌族','普米族',
    '塔吉克族','怒族','乌孜别克族','俄罗斯族','鄂温克族','德昂族','保安族','裕固族','京族','塔塔尔族','独龙族','鄂伦春族',
    '赫哲族','门巴族','珞巴族','基诺族']) with ordinality as t(label, n);
insert into code_lists (list, code, label, sort) values
    ('ethnicity', '97', '其他', 97), ('ethnicity', '98', '外国血统中国籍人士', 98);

-- The reference average monthly wage (社平工资) a contribution base is compared with (60 %–300 %), effective-dated.
-- The figure here is the development value; the province loads its published one.
create table reference_wages (
    valid_from     date primary key,
    monthly_amount numeric(12, 2) not null check (monthly_amount > 0)
);
insert into reference_wages values (date '2024-01-01', 7000.00);

-- People. The ID number is sealed (AES-256-GCM under the key of `key_version`); a keyed HMAC finds it and a masked
-- copy is what lists show. The same for a retiree's payment account.
create table persons (
    person_id            uuid primary key,
    institution_code     text        not null,
    kind                 text        not null check (kind in ('staff', 'retiree_pre_reform', 'retiree_post_reform')),
    name                 text        not null,
    id_type              text        not null,
    id_number_sealed     bytea       not null,
    id_number_hmac       bytea       not null,
    id_number_masked     text        not null,
    key_version          integer     not null,
    sex                  char(1)     not null check (sex in ('1', '2')),
    birth_date           date        not null,
    funding_form         text        not null,
    ethnicity            text        not null,
    work_start           date,
    joined_unit          date,
    personnel_status     text        not null,
    establishment        text        not null,
    post_rank            text,
    wage_base            numeric(12, 2),
    phone                text,
    address              text,
    retirement_date      date,
    retirement_category  text,
    monthly_pension      numeric(12, 2),
    pay_start_month      date,
    pay_bank             text,
    pay_account_sealed   bytea,
    pay_account_masked   text,
    -- found, not_found, name_mismatch, deceased, pending (公安库 not reached: checked again later), not_applicable.
    population_status    text        not null,
    -- [{code, accepted_by, accepted_at}]: the warnings the operator accepted.
    accepted_warnings    jsonb       not null default '[]',
    created_at           timestamptz not null default now(),
    created_by           text        not null,
    updated_at           timestamptz not null default now(),
    updated_by           text        not null
);

create index persons_unit on persons (institution_code, kind, name);
create index persons_hmac on persons (id_number_hmac);
create index persons_population_pending on persons (updated_at) where population_status = 'pending';

-- A unit's roster while a declaration is pending: no person may be added, changed or removed.
create table roster_locks (
    institution_code text primary key,
    declaration_id   text        not null,
    locked_at        timestamptz not null default now()
);
