"""The fixed chat workload every benchmark sends (the same prompts, in the same order, for every configuration)."""

PROMPTS = [
    "Summarise the plot of a heist movie in two sentences.",
    "Write a short haiku about autumn rain.",
    "Explain what a hash table is to a beginner.",
    "Give three tips for keeping a houseplant alive.",
    "Translate 'good morning, how are you?' into French.",
    "What are the main causes of inflation?",
    "Describe the water cycle step by step.",
    "Suggest a name for a bakery that sells sourdough.",
    "Why is the sky blue?",
    "List four uses of a paperclip.",
    "Write a polite email asking to reschedule a meeting.",
    "How does a bicycle stay upright when moving?",
    "What is the difference between weather and climate?",
    "Give a one-paragraph history of the printing press.",
    "Explain recursion with a simple example.",
    "Recommend a weekend routine for better sleep.",
]
