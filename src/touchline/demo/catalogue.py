"""The demo shop's catalogue and the raw material for its customers (pure data).

Sixty products in ten categories, priced in roubles, plus Russian first and
last names, e-mail domains and mobile operator codes. Everything here is
fixed: the seed only decides who buys what, not what the shop sells.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Product:
    """One catalogue item, with the fields Segment's e-commerce spec puts in ``products``."""

    product_id: str
    sku: str
    name: str
    category: str
    brand: str
    price: int  # roubles

    def as_segment(self, *, quantity: int = 1) -> dict[str, object]:
        """The product as an item of a Segment ``products`` list."""
        return {
            "product_id": self.product_id,
            "sku": self.sku,
            "name": self.name,
            "category": self.category,
            "brand": self.brand,
            "price": self.price,
            "quantity": quantity,
        }


# (category, [(name, brand, price in RUB), ...]) — six products each.
_CATALOGUE: tuple[tuple[str, tuple[tuple[str, str, int], ...]], ...] = (
    (
        "Смартфоны",
        (
            ("Смартфон Galaxy A55 8/256 ГБ", "Samsung", 38990),
            ("Смартфон Redmi Note 13 Pro 8/256 ГБ", "Xiaomi", 27990),
            ("Смартфон iPhone 15 128 ГБ", "Apple", 79990),
            ("Смартфон Honor 200 12/256 ГБ", "Honor", 42990),
            ("Смартфон realme 12 8/256 ГБ", "realme", 19990),
            ("Смартфон POCO X6 Pro 12/512 ГБ", "Xiaomi", 32990),
        ),
    ),
    (
        "Наушники",
        (
            ("Наушники AirPods Pro 2", "Apple", 24990),
            ("Наушники Galaxy Buds FE", "Samsung", 6990),
            ("Наушники WH-1000XM5", "Sony", 34990),
            ("Наушники Redmi Buds 5", "Xiaomi", 2990),
            ("Наушники JBL Tune 520BT", "JBL", 4490),
            ("Наушники Honor Choice Earbuds X5", "Honor", 1990),
        ),
    ),
    (
        "Ноутбуки",
        (
            ("Ноутбук MacBook Air 13 M2", "Apple", 99990),
            ("Ноутбук IdeaPad Slim 3 15", "Lenovo", 45990),
            ("Ноутбук Vivobook 15 X1504", "ASUS", 42990),
            ("Ноутбук MagicBook X16", "Honor", 54990),
            ("Ноутбук Aspire 5 A515", "Acer", 49990),
            ("Ноутбук RedmiBook 15", "Xiaomi", 39990),
        ),
    ),
    (
        "Аксессуары",
        (
            ("Чехол-книжка для смартфона", "Deppa", 990),
            ("Зарядное устройство 33 Вт USB-C", "Xiaomi", 1490),
            ("Кабель USB-C — Lightning 1 м", "Apple", 2290),
            ("Защитное стекло для смартфона", "Red Line", 590),
            ("Внешний аккумулятор 20000 мА·ч", "Xiaomi", 2790),
            ("Беспроводная мышь M185", "Logitech", 1290),
        ),
    ),
    (
        "Умные часы",
        (
            ("Умные часы Apple Watch SE 40 мм", "Apple", 26990),
            ("Фитнес-браслет Smart Band 8", "Xiaomi", 3490),
            ("Умные часы Galaxy Watch6 40 мм", "Samsung", 21990),
            ("Умные часы HUAWEI Watch Fit 3", "HUAWEI", 12990),
            ("Умные часы Amazfit Bip 5", "Amazfit", 7990),
            ("Детские часы с GPS Elari KidPhone", "Elari", 5990),
        ),
    ),
    (
        "Бытовая техника",
        (
            ("Робот-пылесос Robot Vacuum S10", "Xiaomi", 19990),
            ("Чайник электрический Mi Smart Kettle", "Xiaomi", 3990),
            ("Кофемашина капсульная Dolce Gusto Genio S", "Krups", 9990),
            ("Блендер погружной HB 4556", "Braun", 5490),
            ("Утюг с парогенератором", "Tefal", 8990),
            ("Фен Supersonic HD07", "Dyson", 44990),
        ),
    ),
    (
        "Дом",
        (
            ("Комплект постельного белья, сатин, евро", "Togas", 6490),
            ("Набор полотенец махровых, 3 шт.", "Cleanelly", 2490),
            ("Подушка ортопедическая с эффектом памяти", "Аскона", 3990),
            ("Плед флисовый 150×200", "Павлинка", 1490),
            ("Набор кастрюль из нержавеющей стали", "Rondell", 7990),
            ("Сковорода с антипригарным покрытием 28 см", "Tefal", 2990),
        ),
    ),
    (
        "Красота",
        (
            ("Крем для лица увлажняющий 50 мл", "Natura Siberica", 690),
            ("Парфюмерная вода 50 мл", "Zarina", 3490),
            ("Набор для ухода за волосами", "Estel", 1890),
            ("Электрическая зубная щётка", "Oral-B", 4990),
            ("Сыворотка с витамином С 30 мл", "Librederm", 1290),
            ("Бритва электрическая серии 5", "Philips", 7490),
        ),
    ),
    (
        "Детям",
        (
            ("Конструктор City «Пожарная часть»", "LEGO", 8990),
            ("Кукла с аксессуарами", "Barbie", 2490),
            ("Настольная игра «Каркассон»", "Hobby World", 1990),
            ("Детский самокат трёхколёсный", "Micar", 3490),
            ("Набор для рисования, 86 предметов", "Каляка-Маляка", 1290),
            ("Радиоуправляемая машинка", "Crossbot", 2790),
        ),
    ),
    (
        "Книги",
        (
            ("Мастер и Маргарита, М. Булгаков", "Азбука", 490),
            ("Преступление и наказание, Ф. Достоевский", "Эксмо", 390),
            ("Атомные привычки, Дж. Клир", "Питер", 890),
            ("Пиши, сокращай, М. Ильяхов", "Альпина", 1190),
            ("Гарри Поттер и философский камень", "Махаон", 790),
            ("Думай медленно… решай быстро, Д. Канеман", "АСТ", 990),
        ),
    ),
)


def build_catalogue() -> list[Product]:
    """The 60 products, with stable ids (``p-101`` …) and SKUs."""
    products: list[Product] = []
    for c_index, (category, items) in enumerate(_CATALOGUE, start=1):
        for i_index, (name, brand, price) in enumerate(items, start=1):
            number = c_index * 100 + i_index
            products.append(
                Product(
                    product_id=f"p-{number}",
                    sku=f"TL-{number:05d}",
                    name=name,
                    category=category,
                    brand=brand,
                    price=price,
                )
            )
    return products


CATEGORIES: tuple[str, ...] = tuple(category for category, _ in _CATALOGUE)

# (zone, share of customers): most of the audience lives on Moscow time.
TIMEZONES: tuple[tuple[str, float], ...] = (
    ("Europe/Moscow", 0.58),
    ("Asia/Yekaterinburg", 0.14),
    ("Asia/Novosibirsk", 0.12),
    ("Europe/Kaliningrad", 0.07),
    ("Asia/Vladivostok", 0.09),
)

# (male, female) forms of common surnames.
SURNAMES: tuple[tuple[str, str], ...] = (
    ("Иванов", "Иванова"),
    ("Смирнов", "Смирнова"),
    ("Кузнецов", "Кузнецова"),
    ("Попов", "Попова"),
    ("Васильев", "Васильева"),
    ("Петров", "Петрова"),
    ("Соколов", "Соколова"),
    ("Михайлов", "Михайлова"),
    ("Новиков", "Новикова"),
    ("Фёдоров", "Фёдорова"),
    ("Морозов", "Морозова"),
    ("Волков", "Волкова"),
    ("Алексеев", "Алексеева"),
    ("Лебедев", "Лебедева"),
    ("Семёнов", "Семёнова"),
    ("Егоров", "Егорова"),
    ("Павлов", "Павлова"),
    ("Козлов", "Козлова"),
    ("Степанов", "Степанова"),
    ("Николаев", "Николаева"),
)
MALE_NAMES = (
    "Александр",
    "Дмитрий",
    "Максим",
    "Сергей",
    "Андрей",
    "Алексей",
    "Артём",
    "Илья",
    "Кирилл",
    "Михаил",
    "Никита",
    "Иван",
)
FEMALE_NAMES = (
    "Анна",
    "Мария",
    "Елена",
    "Ольга",
    "Наталья",
    "Татьяна",
    "Екатерина",
    "Анастасия",
    "Дарья",
    "Юлия",
    "Ирина",
    "Светлана",
)
EMAIL_DOMAINS = ("mail.ru", "yandex.ru", "gmail.com", "bk.ru", "inbox.ru", "list.ru", "ya.ru")
# Mobile operator codes (+7 9xx) that phonenumbers accepts as valid Russian mobiles.
MOBILE_CODES = (
    "901", "903", "905", "909", "912", "913", "915", "916", "917", "919",
    "921", "922", "923", "925", "926", "950", "952", "960", "961", "962",
    "964", "965", "967", "977", "981", "982", "983", "985", "987", "999",
)  # fmt: skip
CARRIERS = ("СДЭК", "Почта России", "Boxberry", "Яндекс Доставка")

_TRANSLIT = str.maketrans(
    {
        "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ё": "e",
        "ж": "zh", "з": "z", "и": "i", "й": "y", "к": "k", "л": "l", "м": "m",
        "н": "n", "о": "o", "п": "p", "р": "r", "с": "s", "т": "t", "у": "u",
        "ф": "f", "х": "kh", "ц": "ts", "ч": "ch", "ш": "sh", "щ": "shch",
        "ъ": "", "ы": "y", "ь": "", "э": "e", "ю": "yu", "я": "ya",
    }
)  # fmt: skip


def translit(text: str) -> str:
    """Latin spelling of a Russian name, for e-mail addresses (``Фёдоров`` → ``fedorov``)."""
    return text.lower().translate(_TRANSLIT)
