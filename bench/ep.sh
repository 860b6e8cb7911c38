#!/usr/bin/env bash
# Expert-parallel data movement of the bench preset under the contiguous plan, 4 ranks
# (BENCHMARKS.md, "Expert parallel: bytes moved per token per MoE layer").
#
#   bench/ep.sh            # writes /tmp/bench-qwen3 if missing, runs the group, prints the table
#
# Needs a release build of `moeflow` (cargo builds it) and python3 for the arithmetic.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-/tmp/bench-qwen3}
OUT=${OUT:-/tmp/ep-group-stats.jsonl}
if [ ! -d "$MODEL" ]; then
  cargo run --release -p moeflow -- init-model --arch qwen3_moe --preset bench --out "$MODEL"
fi
cargo run --release -p moeflow -- group --model "$MODEL" --ranks 4 \
  --max-tokens 16 --ignore-eos --stats \
  --prompt "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined movable metal type, oil-based ink and a wooden screw press into a single system. Before that, books were copied by hand in monasteries and workshops, which made them rare and expensive. Within fifty years, printing shops had spread to more than two hundred cities across Europe, and millions of books were produced. Scholars could now compare identical copies of a text, which changed how knowledge was checked and shared." \
  --prompt "Photosynthesis is the process by which green plants, algae and some bacteria turn light energy into chemical energy. In the leaves, chlorophyll absorbs mostly blue and red light and uses it to split water molecules, releasing oxygen as a by-product. The energy captured in this way is stored in molecules that the plant then uses to build sugars from carbon dioxide taken from the air. Almost all life on Earth depends, directly or indirectly, on the food and oxygen made by this process." \
  --prompt "A good cup of coffee starts long before the water boils. The beans are picked as ripe cherries, dried, hulled and roasted, and each step changes the flavour. Light roasts keep more of the fruity and acidic notes of the origin, while dark roasts taste of chocolate, caramel and smoke. Grinding should happen just before brewing, because ground coffee loses its aroma within minutes. Finally, the water should be just below boiling and the coffee should steep for about four minutes." \
  --prompt "The city council met on Tuesday evening to discuss the new plan for public transport. Several residents asked for more frequent buses on the northern routes, where people often wait more than twenty minutes in the morning. The mayor explained that the budget for next year includes ten new electric buses and a longer night service on weekends. A vote on the final plan is expected next month, after the transport department has published its report on passenger numbers and costs." \
  --prompt "Learning a second language as an adult is slower than learning it as a child, but it is far from impossible. Adults can use what they already know about grammar, they can read and take notes, and they can plan their practice. The most effective learners speak with native speakers as often as they can, listen to radio and podcasts, and are not afraid of making mistakes. Regular short sessions every day usually work better than long lessons once a week, because memory needs repetition." \
  --prompt "Mount Everest, on the border between Nepal and China, is the highest mountain on Earth above sea level. The first confirmed ascent was made in May 1953 by Edmund Hillary and Tenzing Norgay, who reached the summit from the southern side. Today hundreds of climbers attempt the mountain every spring, when the weather is most stable. The thin air above eight thousand metres, the cold and the sudden storms make the climb dangerous even for experienced mountaineers with bottled oxygen and guides." \
  --prompt "Software engineers often say that code is read far more often than it is written. A clear name for a function, a short comment that explains why something is done, and tests that show how the code is meant to be used save hours for the next person who has to change it. Large systems are easier to maintain when they are split into small parts with simple interfaces, so that a change in one place does not break something far away. Reviews by colleagues catch many mistakes early." \
  --prompt "The ocean covers about seventy percent of the surface of our planet and holds most of its water. Currents such as the Gulf Stream carry warm water from the tropics towards the poles and have a strong effect on the climate of the land nearby. Deep below the surface, where no sunlight reaches, strange animals live in complete darkness and very high pressure. Scientists believe that large parts of the deep sea have never been explored, and new species are discovered on almost every expedition." \
  | tee "$OUT"
python3 bench/ep_bytes.py "$OUT"
