print("cowbd")
