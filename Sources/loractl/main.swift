print("loractl")
