"""Calibration texts for post-training quantization (GPTQ's Hessians): short and long inputs, the trained
prompts, several scripts and code. None is a text of the evaluation suite; one query is close to the CPU
benchmark's query (the benchmark's 48 passages are not among them)."""

from __future__ import annotations

# Diverse calibration inputs with the trained prompts: short and long, several scripts, code.
CALIBRATION_TEXTS = (
    "task: search result | query: Which planet is known as the Red Planet?",
    "task: search result | query: how do I parse command line arguments in python",
    "task: question answering | query: When did the Second World War end?",
    "task: fact checking | query: The Great Wall of China is visible from space.",
    "task: sentence similarity | query: A man is playing a guitar on stage.",
    "task: classification | query: This movie was a complete waste of two hours.",
    "task: clustering | query: Central bank raises interest rates to curb inflation",
    "task: code retrieval | query: sort a list of dictionaries by a key",
    "title: none | text: Mars, known for its reddish appearance, is often referred to as the Red Planet. Its "
    "surface is covered in iron oxide dust, and it has the tallest volcano in the solar system, Olympus Mons.",
    "title: Photosynthesis | text: Photosynthesis is the process by which green plants and some other organisms "
    "use sunlight to synthesize foods from carbon dioxide and water, generating oxygen as a by-product.",
    "title: none | text: def merge_sorted(a, b):\n    out, i, j = [], 0, 0\n    while i < len(a) and j < len(b):\n"
    "        if a[i] <= b[j]:\n            out.append(a[i]); i += 1\n"
    "        else:\n            out.append(b[j]); j += 1\n"
    "    return out + a[i:] + b[j:]",
    "title: none | text: SELECT customer_id, SUM(amount) AS total FROM orders WHERE created_at >= '2024-01-01' "
    "GROUP BY customer_id ORDER BY total DESC LIMIT 10;",
    "title: none | text: const fetchUser = async (id) => { const res = await fetch(`/api/users/${id}`); "
    "return res.json(); };",
    "title: none | text: Der Eiffelturm ist ein 330 Meter hoher Eisenfachwerkturm in Paris, errichtet für die "
    "Weltausstellung 1889.",
    "title: none | text: La photosynthèse convertit l'énergie lumineuse en énergie chimique chez les plantes vertes.",
    "title: none | text: Canberra es la capital de Australia, situada en el Territorio de la Capital Australiana.",
    "title: none | text: 東京都の人口は約1400万人で、日本で最も人口の多い都道府県です。",
    "title: none | text: 长城是中国古代的军事防御工程，总长度超过两万公里。",
    "title: none | text: Машинное обучение — класс методов искусственного интеллекта, которые учатся на данных.",
    "title: none | text: القاهرة هي عاصمة مصر وأكبر مدنها، وتقع على ضفاف نهر النيل.",
    "title: none | text: भारत दक्षिण एशिया में स्थित एक विशाल देश है जिसकी राजधानी नई दिल्ली है।",
    "title: none | text: 서울은 대한민국의 수도이며 한강을 따라 위치해 있다.",
    "title: none | text: Version 3.11.7 released on 2023-12-04: see https://www.python.org/downloads/ for 64-bit "
    "installers; SHA-256 checksums 9f1e...a27c, sizes 25.4 MB and 19,886,120 bytes.",
    'title: Terms | text: THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, '
    "INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE.",
    "x",
    "",
)
