import EmberCore
print("ember")
