"""Reading results: `emolightning score` of a prediction file, and the run reports and their figures."""
