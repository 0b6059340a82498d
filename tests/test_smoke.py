async def test_livez(api):
    r = await api.get("/livez")
    assert r.status == 200 and r.body == {"status": "ok"}


async def test_user_roundtrip(api):
    u = await api.user("sophie")
    me = await api.get("/api/users/me/", token=u.access)
    assert me.status == 200 and me.body["username"] == u.username
