"""Static reference data of the fake merchant: store sites, the café menu, stock items, people."""

from __future__ import annotations

# (timezone, suburb, state, postcode, country, line1) - one site per time zone, reused with "#2"...
SITES = [
    ("Australia/Sydney", "Surry Hills", "NSW", "2010", "AU", "412 Crown St"),
    ("Australia/Perth", "Fremantle", "WA", "6160", "AU", "7 South Tce"),
    ("Pacific/Auckland", "Ponsonby", "AUK", "1011", "NZ", "150 Ponsonby Rd, Te Whanganui-o-Hei"),
    ("Australia/Adelaide", "Norwood", "SA", "5067", "AU", "88 The Parade"),
    ("Australia/Brisbane", "West End", "QLD", "4101", "AU", "23 Boundary St"),
    ("Australia/Melbourne", "Richmond", "VIC", "3121", "AU", "12 Swan St"),
    ("Australia/Hobart", "Salamanca", "TAS", "7004", "AU", "61 Salamanca Pl"),
    ("Australia/Darwin", "Parap", "NT", "0820", "AU", "3 Parap Rd"),
    ("Australia/Lord_Howe", "Lord Howe Island", "NSW", "2898", "AU", "1 Ned's Beach Rd"),
]
STORE_NAME_PREFIX = "Prosperity"
BUSINESS_NAME = "Prosperity Group Pty Ltd"

CASHIER_NAMES = ["Jess", "Zoë", "Mateo", "Aroha", "Nguyễn An", "Priya", "Liam", "Søren"]
CUSTOMER_NAMES = [
    "Sam Lee", "Zoë Ng", "Mārama Te Ao", "José García", "Chloé Martin", "Aiden O'Brien",
    "Wei Zhang", "Fatima Khan", "Hēmi Walker", "Olivia Smith", "Noah Brown", "Isla Wilson",
    "Ethan Taylor", "Mia Anderson", "Lucas Thomas", "Ava Jackson", "Björn Larsen", "Yuki Tanaka",
    "Ravi Patel", "Grace Kim", "Jack White", "Ruby Harris", "Leo Martin", "Ella Thompson",
    "Oscar Garcia", "Sophie Martinez", "Henry Robinson", "Amelia Clark", "Charlie Lewis",
    "Lily Walker", "Thomas Hall", "Harper Allen", "Max Young", "Zara King", "Finn Wright",
    "Matilda Scott", "Archie Green", "Evie Baker", "Hugo Adams", "Ivy Nelson",
]

# Modifier groups: (modifier id, name, price in cents)
MODS_COFFEE = [(77, "Oat milk", 80), (78, "Soy milk", 70), (79, "Almond milk", 80),
               (80, "Extra shot", 60), (81, "Large", 100), (82, "Decaf", 50), (83, "Vanilla syrup", 70)]
MODS_FOOD = [(90, "Add bacon", 450), (91, "Add egg", 300), (92, "Gluten-free bread", 150),
             (93, "Halloumi", 400), (94, "Avocado", 400)]
MODS_BAKERY = [(95, "Warmed", 0), (96, "Butter", 50)]
MODS_DRINKS = [(97, "No ice", 0), (98, "Extra ginger", 100)]

# Menu: (product id, sku, name, category, price in cents, modifier group, chance of modifiers)
MENU = [
    (3301, "LAT-REG", "Latte", "Coffee", 550, MODS_COFFEE, 0.45),
    (3302, "FW-REG", "Flat white", "Coffee", 520, MODS_COFFEE, 0.40),
    (3303, "CAP-REG", "Cappuccino", "Coffee", 550, MODS_COFFEE, 0.40),
    (3304, "LB-REG", "Long black", "Coffee", 480, MODS_COFFEE, 0.20),
    (3305, "MOC-REG", "Mocha", "Coffee", 600, MODS_COFFEE, 0.35),
    (3306, "CHAI-REG", "Chai latte", "Coffee", 580, MODS_COFFEE, 0.40),
    (3307, "ESP", "Espresso", "Coffee", 420, MODS_COFFEE, 0.15),
    (4410, "BRK-BIG", "Big breakfast", "Food", 2400, MODS_FOOD, 0.30),
    (4411, "AVO-SMSH", "Smashed avo", "Food", 1950, MODS_FOOD, 0.35),
    (4412, "EGG-BEN", "Eggs benedict", "Food", 2100, MODS_FOOD, 0.25),
    (4413, "BLT", "BLT", "Food", 1450, MODS_FOOD, 0.20),
    (4414, "TST-HC", "Ham & cheese toastie", "Food", 1200, MODS_FOOD, 0.15),
    (4415, "ACAI", "Açaí bowl", "Food", 1650, MODS_FOOD, 0.05),
    (4416, "BIRCH", "Bircher muesli", "Food", 1300, MODS_FOOD, 0.05),
    (5120, "OJ", "Orange juice", "Drinks", 890, MODS_DRINKS, 0.10),
    (5121, "ICE-LAT", "Iced latte", "Drinks", 650, MODS_DRINKS, 0.20),
    (5122, "KOMB", "Kombucha", "Drinks", 600, MODS_DRINKS, 0.05),
    (5123, "SPARK", "Sparkling water", "Drinks", 450, MODS_DRINKS, 0.05),
    (5124, "SMOO-BRY", "Berry smoothie", "Drinks", 950, MODS_DRINKS, 0.15),
    (6201, "CROIS", "Croissant", "Bakery", 550, MODS_BAKERY, 0.40),
    (6202, "BAN-BRD", "Banana bread", "Bakery", 650, MODS_BAKERY, 0.50),
    (6203, "MUF-BLU", "Blueberry muffin", "Bakery", 500, MODS_BAKERY, 0.30),
    (6204, "FRIAND", "Raspberry friand", "Bakery", 550, MODS_BAKERY, 0.10),
    (6205, "PAC", "Pain au chocolat", "Bakery", 600, MODS_BAKERY, 0.30),
    (6206, "CRM-BRL", "Crème brûlée tart", "Bakery", 750, MODS_BAKERY, 0.05),
]
CATEGORIES = ["Coffee", "Food", "Drinks", "Bakery"]
# category weights by part of day: (breakfast <11h, lunch <15h, rest)
CATEGORY_WEIGHTS = ([55, 20, 5, 20], [30, 45, 15, 10], [25, 35, 25, 15])

REFUND_REASONS = ["wrong order", "customer complaint", "item unavailable", "cold coffee",
                  "duplicate charge", "café closed early — refund"]

# Stock items: (product id, sku, name, category, unit, cost cents, sell cents)
STOCK = [
    (9001, "BEANS-HOUSE-1KG", "House blend beans 1kg", "Coffee", "each", 1820, 3200),
    (9002, "BEANS-SO-1KG", "Single origin beans 1kg", "Coffee", "each", 2450, 4200),
    (9003, "BEANS-BULK", "House blend beans (bulk)", "Coffee", "kg", 1650, 0),
    (9004, "DECAF-BULK", "Decaf beans (bulk)", "Coffee", "kg", 2100, 0),
    (9005, "CHAI-MIX", "Chai mix", "Coffee", "kg", 1900, 0),
    (9006, "COCOA", "Drinking chocolate", "Coffee", "kg", 1400, 0),
    (9007, "MILK-FULL", "Full cream milk", "Drinks", "l", 165, 0),
    (9008, "MILK-SKIM", "Skim milk", "Drinks", "l", 160, 0),
    (9009, "MILK-OAT", "Oat milk", "Drinks", "l", 390, 0),
    (9010, "MILK-SOY", "Soy milk", "Drinks", "l", 310, 0),
    (9011, "MILK-ALM", "Almond milk", "Drinks", "l", 350, 0),
    (9012, "OJ-FRESH", "Fresh orange juice", "Drinks", "l", 520, 0),
    (9013, "KOMB-BTL", "Kombucha bottle", "Drinks", "each", 260, 600),
    (9014, "SPARK-BTL", "Sparkling water bottle", "Drinks", "each", 120, 450),
    (9015, "SYR-VAN", "Vanilla syrup", "Coffee", "l", 1250, 0),
    (9016, "SYR-CAR", "Caramel syrup", "Coffee", "l", 1250, 0),
    (9017, "BERRIES-FRZ", "Frozen berries", "Drinks", "kg", 980, 0),
    (9018, "BANANA", "Bananas", "Food", "kg", 390, 0),
    (9019, "EGGS", "Free range eggs", "Food", "each", 55, 0),
    (9020, "BACON", "Bacon", "Food", "kg", 1890, 0),
    (9021, "AVOCADO", "Avocado", "Food", "each", 150, 0),
    (9022, "SOURDOUGH", "Sourdough loaf", "Food", "each", 650, 0),
    (9023, "GF-BREAD", "Gluten-free loaf", "Food", "each", 890, 0),
    (9024, "HALLOUMI", "Halloumi", "Food", "kg", 2490, 0),
    (9025, "HAM", "Leg ham", "Food", "kg", 2190, 0),
    (9026, "CHEESE", "Tasty cheese", "Food", "kg", 1490, 0),
    (9027, "TOMATO", "Tomatoes", "Food", "kg", 690, 0),
    (9028, "LETTUCE", "Cos lettuce", "Food", "each", 250, 0),
    (9029, "BUTTER", "Butter", "Food", "kg", 1290, 0),
    (9030, "HOLLANDAISE", "Hollandaise", "Food", "l", 1590, 0),
    (9031, "ACAI-PACK", "Açaí pulp packs", "Food", "each", 320, 0),
    (9032, "OATS", "Rolled oats", "Food", "kg", 410, 0),
    (9033, "YOGHURT", "Greek yoghurt", "Food", "kg", 790, 0),
    (9034, "CROIS-FRZ", "Croissants (frozen)", "Bakery", "each", 140, 550),
    (9035, "PAC-FRZ", "Pain au chocolat (frozen)", "Bakery", "each", 160, 600),
    (9036, "MUF-MIX", "Muffin mix", "Bakery", "kg", 520, 0),
    (9037, "FLOUR", "Plain flour", "Bakery", "kg", 180, 0),
    (9038, "SUGAR", "Raw sugar", "Bakery", "kg", 210, 0),
    (9039, "ALMOND-MEAL", "Almond meal", "Bakery", "kg", 1690, 0),
    (9040, "RASPB", "Raspberries (frozen)", "Bakery", "kg", 1290, 0),
    (9041, "CUP-8OZ", "Takeaway cup 8oz", "Drinks", "each", 12, 0),
    (9042, "CUP-12OZ", "Takeaway cup 12oz", "Drinks", "each", 14, 0),
    (9043, "LID", "Cup lids", "Drinks", "each", 4, 0),
    (9044, "NAPKIN", "Napkins", "Food", "each", 1, 0),
    (9045, "KEEPCUP", "KeepCup 12oz", "Coffee", "each", 1450, 2800),
    (9046, "TOTE", "Tote bag", "Bakery", "each", 420, 1500),
    (9047, "GRANOLA-JAR", "Granola jar 500g", "Food", "each", 690, 1400),
    (9048, "HONEY-JAR", "Mānuka honey jar", "Food", "each", 1890, 3400),
    (9049, "TEA-EB", "English breakfast tea", "Drinks", "kg", 3900, 0),
    (9050, "TEA-GRN", "Sencha green tea", "Drinks", "kg", 5200, 0),
    (9051, "MATCHA", "Matcha powder", "Coffee", "kg", 9800, 0),
    (9052, "ICE", "Ice", "Drinks", "kg", 90, 0),
    (9053, "GINGER", "Fresh ginger", "Drinks", "kg", 1190, 0),
    (9054, "LEMON", "Lemons", "Drinks", "kg", 590, 0),
    (9055, "COOKIE-DGH", "Cookie dough", "Bakery", "kg", 990, 0),
    (9056, "BEANS-RETAIL-250", "Retail beans 250g", "Coffee", "each", 620, 1500),
    (9057, "CHOC-BAR", "Dark chocolate bar", "Bakery", "each", 210, 500),
    (9058, "WATER-BTL", "Still water bottle", "Drinks", "each", 80, 350),
    (9059, "SALT", "Sea salt flakes", "Food", "kg", 1390, 0),
    (9060, "PEPPER", "Black pepper", "Food", "kg", 2990, 0),
    (9061, "SPINACH", "Baby spinach", "Food", "kg", 1490, 0),
    (9062, "MUSHROOM", "Mushrooms", "Food", "kg", 1190, 0),
    (9063, "FETA", "Danish feta", "Food", "kg", 1690, 0),
    (9064, "CHILLI-OIL", "Chilli oil", "Food", "l", 2290, 0),
]
